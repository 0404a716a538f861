"""EG3D camera labels: 25 numbers per view, cam2world (4x4, row-major) then the intrinsics (3x3)
normalised by the image size. Cameras use OpenCV's axes (x right, y down, z forward) in a world
whose y axis points up, as EG3D's FFHQ poses do.

`orbit_cameras` places cameras as EG3D's `LookAtPoseSampler` does: on a sphere of `radius` around
the world origin at yaw and pitch offsets (radians) from the frontal view, looking at `pivot`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CAMERA_NUMBERS = 25
MAX_ANGLE = math.pi / 2  # beyond +-90 degrees the camera looks at the back of the head (or flips over it)
RIGID_TOLERANCE = 1e-3
POLAR_MARGIN = 1e-5  # the official sampler keeps the polar angle this far from the poles


def intrinsics(fov_degrees: float) -> np.ndarray:
    """[3, 3] normalised intrinsics of a square image with this field of view, principal point centred
    (with the release's constants: pi as 3.14159 and sqrt(2) as 1.414)."""
    focal = 1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414)
    return np.array([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1]], np.float64)


def look_at(yaw: float, pitch: float, *, radius: float, pivot: Sequence[float]) -> np.ndarray:
    """[4, 4] cam2world of a camera at (yaw, pitch) from the frontal view, `radius` from the origin,
    looking at `pivot` without roll."""
    polar = np.clip(math.pi / 2 + pitch, POLAR_MARGIN, math.pi - POLAR_MARGIN) / math.pi
    theta, phi = math.pi / 2 + yaw, math.acos(1 - 2 * polar)
    origin = radius * np.array(
        [math.sin(phi) * math.cos(math.pi - theta), math.cos(phi), math.sin(phi) * math.sin(math.pi - theta)]
    )
    forward = np.asarray(pivot, np.float64) - origin
    forward /= np.linalg.norm(forward)
    right = -np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    cam2world = np.eye(4)
    cam2world[:3, :3] = np.stack([right, up, forward], axis=-1)
    cam2world[:3, 3] = origin
    return cam2world


def orbit_cameras(
    yaws: Sequence[float], pitches: Sequence[float], *, radius: float, pivot: Sequence[float], fov_degrees: float
) -> np.ndarray:
    """[N, 25] float32 camera labels, one per (yaw, pitch) pair (radians)."""
    if len(yaws) != len(pitches):
        raise ValueError(f"orbit_cameras: {len(yaws)} yaws but {len(pitches)} pitches")
    check_angles(yaws, "yaw")
    check_angles(pitches, "pitch")
    k = intrinsics(fov_degrees).reshape(9)
    return np.stack(
        [np.concatenate([look_at(y, p, radius=radius, pivot=pivot).reshape(16), k]) for y, p in zip(yaws, pitches)]
    ).astype(np.float32)


def check_angles(angles: Sequence[float], name: str) -> None:
    bad = [a for a in angles if not (math.isfinite(a) and abs(a) <= MAX_ANGLE)]
    if bad:
        raise ValueError(
            f"{name} {bad[0]!r}: angles are radians within +-{MAX_ANGLE:.4f} (90 degrees) of the frontal view"
        )


def split_labels(cameras):
    """Camera labels [V, 25] (numpy or jax) -> (cam2world [V, 4, 4], intrinsics [V, 3, 3])."""
    return cameras[:, :16].reshape(-1, 4, 4), cameras[:, 16:].reshape(-1, 3, 3)


def check_camera_labels(cameras) -> np.ndarray:
    """`cameras` as a float32 [N, 25] array, or a one-line ValueError saying what is wrong with them."""
    c = np.asarray(cameras, np.float64)
    if c.ndim != 2 or c.shape[1] != CAMERA_NUMBERS or not len(c):
        raise ValueError(
            f"camera labels of shape {list(c.shape)}: expected [N, 25] (cam2world 4x4 then "
            "normalised intrinsics 3x3, row-major)"
        )
    if not np.isfinite(c).all():
        raise ValueError("camera labels hold NaN or infinite numbers")
    for i, label in enumerate(c):
        cam2world, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
        rotation = cam2world[:3, :3]
        if (
            np.abs(rotation.T @ rotation - np.eye(3)).max() > RIGID_TOLERANCE
            or abs(np.linalg.det(rotation) - 1) > RIGID_TOLERANCE
            or np.abs(cam2world[3] - [0, 0, 0, 1]).max() > RIGID_TOLERANCE
        ):
            raise ValueError(f"camera {i}: cam2world is not rigid (a rotation and a translation, last row 0 0 0 1)")
        if k[0, 0] <= 0 or k[1, 1] <= 0 or np.abs(k[2] - [0, 0, 1]).max() > RIGID_TOLERANCE:
            raise ValueError(f"camera {i}: intrinsics need positive focal lengths and a last row 0 0 1")
    return c.astype(np.float32)


def pixel_centres(resolution: int) -> np.ndarray:
    """[resolution^2, 2] normalised (x, y) image coordinates of the pixel centres, row by row."""
    steps = np.arange(resolution, dtype=np.float32) * np.float32(1.0 / resolution) + np.float32(0.5 / resolution)
    y, x = np.meshgrid(steps, steps, indexing="ij")
    return np.stack([x.reshape(-1), y.reshape(-1)], axis=-1)


def rays(cam2world: jax.Array, intrinsics: jax.Array, resolution: int) -> tuple[jax.Array, jax.Array]:
    """Origins and unit directions [B, M, 3] of the rays through the pixel centres of each camera.

    cam2world [B, 4, 4] (OpenCV axes: x right, y down, z forward), intrinsics [B, 3, 3] normalised by
    the image size (skew allowed, as EG3D's lifting does).
    """
    uv = jnp.asarray(pixel_centres(resolution))
    x, y = uv[None, :, 0], uv[None, :, 1]
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy, skew = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
    x_lift = (x - cx + cy * skew / fy - skew * y / fy) / fx
    y_lift = (y - cy) / fy
    camera_points = jnp.stack([x_lift, y_lift, jnp.ones_like(x_lift), jnp.ones_like(x_lift)], axis=-1)
    world = jnp.einsum("bij,bmj->bmi", cam2world, camera_points, precision="highest")[..., :3]
    origins = cam2world[:, None, :3, 3]
    offsets = world - origins
    directions = offsets / jnp.maximum(jnp.linalg.norm(offsets, axis=-1, keepdims=True), 1e-12)
    return jnp.broadcast_to(origins, directions.shape), directions

"""The toy 3D world: toy faces on a fixed 3D proxy, ray-cast from any EG3D camera, so that what a 3D-aware
generator should show at every view is known exactly.

The proxy is an ellipsoid head in front of a background plane, in EG3D's coordinates (world y up, the
frontal camera on +z at radius 2.7 looking at the origin with EG3D's field of view). A face's 64x64 image
and label map are painted onto the proxy by projecting each surface point through the frontal camera, so
the frontal view is the 2D toy face itself and every other view shows the same face turned: its image
(bilinear), its label map (nearest) and its depth (distance along each unit ray, as EG3D's depth image).
Poses of the world: yaw within +-30 degrees, pitch within +-15 degrees.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import grain
import numpy as np

from cdiff_jax.cameras import orbit_cameras, rays, split_labels
from cdiff_jax.data import toy_faces

RADIUS = 2.7
PIVOT = (0.0, 0.0, 0.0)
FOV_DEGREES = 18.837
MAX_YAW = math.radians(30)
MAX_PITCH = math.radians(15)


@dataclasses.dataclass(frozen=True)
class Proxy:
    """The fixed geometry every toy face is painted on (world units; the frontal view spans about +-0.32)."""

    head_centre: tuple[float, float, float] = (0.0, 0.045, 0.0)  # toy heads sit above the image centre
    head_axes: tuple[float, float, float] = (0.16, 0.2, 0.13)  # the face with its hair and most hats
    plane_z: float = -0.2  # the background, neck and clothes


PROXY = Proxy()


def cameras(yaws, pitches) -> np.ndarray:
    """[V, 25] EG3D camera labels of the toy world's orbit at these angles (radians)."""
    bad = [(y, p) for y, p in zip(yaws, pitches) if abs(y) > MAX_YAW + 1e-9 or abs(p) > MAX_PITCH + 1e-9]
    if bad:
        raise ValueError(f"view {bad[0]}: the toy 3D world covers yaw within +-30 and pitch within +-15 degrees")
    return orbit_cameras(yaws, pitches, radius=RADIUS, pivot=PIVOT, fov_degrees=FOV_DEGREES)


FRONTAL = cameras([0.0], [0.0])  # the camera whose image is the 2D toy face


def cast(camera_labels: np.ndarray, resolution: int, proxy: Proxy = PROXY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit points [V, R*R, 3], depths [V, R*R] and whether the hit is on the head, of the rays through
    each camera's pixel centres."""
    origins, directions = (np.asarray(a, np.float64) for a in rays(*split_labels(camera_labels), resolution))
    centre, axes = np.asarray(proxy.head_centre), np.asarray(proxy.head_axes)
    o, d = (origins - centre) / axes, directions / axes  # the head as a unit sphere
    a, b, c = np.sum(d * d, -1), np.sum(o * d, -1), np.sum(o * o, -1) - 1
    disc = b * b - a * c
    head = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    plane = (proxy.plane_z - origins[..., 2]) / directions[..., 2]
    head = np.where(head > 0, head, np.inf)
    depth = np.minimum(head, np.where(plane > 0, plane, np.inf))
    return origins + depth[..., None] * directions, depth, head <= depth


def frontal_pixels(points: np.ndarray) -> np.ndarray:
    """Continuous (x, y) pixel coordinates [..., 2] of world points in the frontal camera's 64x64 image."""
    cam2world, intrinsics = (a.astype(np.float64) for a in split_labels(FRONTAL))
    rotation, origin = cam2world[0, :3, :3], cam2world[0, :3, 3]
    q = (points - origin) @ rotation  # camera coordinates (OpenCV axes)
    k = intrinsics[0]
    x = k[0, 0] * q[..., 0] / q[..., 2] + k[0, 2]
    y = k[1, 1] * q[..., 1] / q[..., 2] + k[1, 2]
    return np.stack([x, y], -1) * toy_faces.IMAGE_SIZE


def _bilinear(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    x = np.clip(pixels[..., 0] - 0.5, 0, size - 1)
    y = np.clip(pixels[..., 1] - 0.5, 0, size - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), size - 2), np.minimum(np.floor(y).astype(int), size - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


@functools.cache
def _frontal_head_pixels(size: int, proxy: Proxy) -> np.ndarray:
    """[size, size] whether the frontal camera sees the head at each pixel (plane points there are hidden)."""
    return cast(FRONTAL, size, proxy)[2].reshape(size, size)


def _background_rows(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[64, 3] the background colour of each image row (the toy background is a vertical gradient): the mean
    of the row's background pixels, rows without any taking the nearest row's."""
    mask = labels == toy_faces.BACKGROUND
    rows = np.nonzero(mask.any(axis=1))[0]
    means = np.stack([image[r][mask[r]].mean(axis=0) for r in rows])
    nearest = rows[np.abs(np.arange(len(image))[:, None] - rows[None]).argmin(axis=1)]
    return means[np.searchsorted(rows, nearest)]


def render(
    image: np.ndarray,
    labels: np.ndarray,
    camera_labels: np.ndarray,
    resolution: int = toy_faces.IMAGE_SIZE,
    proxy: Proxy = PROXY,
) -> dict[str, np.ndarray]:
    """A toy face (image [64, 64, 3] in [-1, 1], label map [64, 64]) seen by cameras [V, 25]:
    image [V, R, R, 3] float32, labels [V, R, R] uint8, depth [V, R, R, 1] float32.

    The background plane behind the head, which the frontal view never sees, shows the background colour
    of its row (label background) instead of the face the frontal projection would paint there twice.
    """
    image = np.asarray(image, np.float64)
    points, depth, on_head = cast(camera_labels, resolution, proxy)
    pixels = frontal_pixels(points)
    size = labels.shape[0]
    nearest = np.clip(np.floor(pixels).astype(int), 0, size - 1)
    colours = _bilinear(image, pixels)
    seen = labels[nearest[..., 1], nearest[..., 0]]
    hidden_by_head = _frontal_head_pixels(size, proxy)[nearest[..., 1], nearest[..., 0]] & ~on_head
    colours = np.where(hidden_by_head[..., None], _background_rows(image, labels)[nearest[..., 1]], colours)
    seen = np.where(hidden_by_head, toy_faces.BACKGROUND, seen)
    views = len(camera_labels)
    return {
        "image": colours.reshape(views, resolution, resolution, 3).astype(np.float32),
        "labels": seen.reshape(views, resolution, resolution).astype(np.uint8),
        "depth": depth.reshape(views, resolution, resolution, 1).astype(np.float32),
    }


class ToyViews:
    """An endless grain data source of the toy 3D world: record k shows identity k mod `identities` (example
    i of the toy faces with `seed`) from a view drawn uniformly over the world's poses (yaw +-30, pitch +-15
    degrees) by hashing (seed, k). Records: identity (int32), camera [25], image [64, 64, 3] in [-1, 1], depth
    [64, 64, 1] (world units along each ray). Read
    it unshuffled (`make_loader(..., shuffle=False)`): the views are already independent draws."""

    def __init__(self, seed: int, identities: int):
        self.seed, self.identities = seed, identities

    def __len__(self) -> int:
        return 2**31 - 1

    def face(self, identity: int) -> dict:
        return toy_faces.make_example(toy_faces.example_seed(self.seed, identity))

    def __getitem__(self, index: int) -> dict:
        identity = int(index) % self.identities
        rng = np.random.default_rng([self.seed, int(index)])
        yaw, pitch = rng.uniform(-MAX_YAW, MAX_YAW), rng.uniform(-MAX_PITCH, MAX_PITCH)
        camera = cameras([yaw], [pitch])
        face = self.face(identity)
        view = render(face["image"].astype(np.float32) / 127.5 - 1, face["labels"], camera)
        image, depth = view["image"][0], view["depth"][0]
        return {"identity": np.int32(identity), "camera": camera[0], "image": image, "depth": depth}

    def __repr__(self) -> str:  # grain compares it with the one saved in an iterator state
        return f"ToyViews(seed={self.seed}, identities={self.identities})"


def area_average(a: np.ndarray, resolution: int) -> np.ndarray:
    """A 64x64 (HWC) array area-averaged to `resolution` (a divisor of 64), as a camera's pixels would integrate it."""
    f = toy_faces.IMAGE_SIZE // resolution
    return a.reshape(resolution, f, resolution, f, a.shape[-1]).mean(axis=(1, 3), dtype=np.float32)


class ViewInputs(grain.transforms.Map):
    """A `ToyViews` record as model inputs with the image and depth area-averaged to `resolution` (a divisor of 64)."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def map(self, record: dict) -> dict[str, np.ndarray]:
        r = self.resolution
        return {**record, "image": area_average(record["image"], r), "depth": area_average(record["depth"], r)}

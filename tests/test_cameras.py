"""EG3D camera labels: the official LookAtPoseSampler poses (from the EG3D fixture), validation, and the rays
through the pixel centres against the pinhole closed form."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from cdiff_jax.cameras import check_camera_labels, intrinsics, orbit_cameras, rays, split_labels

FOV = 18.837
RESOLUTION = 24


def cameras(yaws, pitches):
    """(cam2world, intrinsics) of cameras on EG3D's orbit around the origin."""
    return split_labels(jnp.asarray(orbit_cameras(yaws, pitches, radius=2.7, pivot=(0, 0, 0), fov_degrees=FOV)))


def test_orbit_cameras_equal_the_official_poses(fixtures_root):
    folder = fixtures_root / "eg3d"
    camera = json.loads((folder / "config.json").read_text())["derived"]["camera"]
    io = np.load(folder / "io.npz")
    yaws, pitches = zip(*camera["poses_yaw_pitch_offsets"])
    ours = orbit_cameras(yaws, pitches, radius=camera["radius"], pivot=camera["pivot"], fov_degrees=camera["fov_deg"])
    np.testing.assert_allclose(ours, io["c_cam"], atol=2e-6)
    frontal = orbit_cameras(
        [0.0] * len(yaws),
        [0.0] * len(yaws),
        radius=camera["radius"],
        pivot=camera["pivot"],
        fov_degrees=camera["fov_deg"],
    )
    np.testing.assert_allclose(frontal, io["c_cond"], atol=2e-6)


def test_labels_are_validated():
    good = orbit_cameras([0.2], [0.1], radius=2.7, pivot=(0, 0, 0.2), fov_degrees=18.837)
    assert check_camera_labels(good).shape == (1, 25)
    with pytest.raises(ValueError, match=r"\[1, 16\].*expected \[N, 25\]"):
        check_camera_labels(good[:, :16])
    scaled = good.copy()
    scaled[0, :3] *= 2  # a cam2world that stretches
    with pytest.raises(ValueError, match="camera 0: cam2world is not rigid"):
        check_camera_labels(scaled)
    nan = good.copy()
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_camera_labels(nan)
    flat = good.copy()
    flat[0, 16] = 0
    with pytest.raises(ValueError, match="focal"):
        check_camera_labels(flat)


@pytest.mark.parametrize(
    "yaw, pitch, name", [(math.radians(91), 0.0, "yaw"), (0.0, -2.0, "pitch"), (float("nan"), 0.0, "yaw")]
)
def test_angles_beyond_ninety_degrees_are_refused(yaw, pitch, name):
    with pytest.raises(ValueError, match=f"^{name} .*90 degrees"):
        orbit_cameras([yaw], [pitch], radius=2.7, pivot=(0, 0, 0.2), fov_degrees=18.837)


def test_ray_directions_are_the_pinhole_closed_form():
    cam2world, k = cameras([0.3, -0.5], [0.1, 0.2])
    origins, directions = rays(cam2world, k, RESOLUTION)
    focal = intrinsics(FOV)[0, 0]
    centres = (np.arange(RESOLUTION) + 0.5) / RESOLUTION
    y, x = np.meshgrid(centres, centres, indexing="ij")
    camera_dirs = np.stack([(x - 0.5) / focal, (y - 0.5) / focal, np.ones_like(x)], -1).reshape(-1, 3)
    camera_dirs /= np.linalg.norm(camera_dirs, axis=-1, keepdims=True)
    expected = np.einsum("bij,mj->bmi", np.asarray(cam2world)[:, :3, :3], camera_dirs)
    np.testing.assert_allclose(np.asarray(directions), expected, atol=2e-6)
    np.testing.assert_allclose(
        np.asarray(origins), np.broadcast_to(np.asarray(cam2world)[:, None, :3, 3], origins.shape), atol=1e-6
    )
    centre_ray = np.asarray(directions)[:, RESOLUTION // 2 * RESOLUTION + RESOLUTION // 2]
    to_pivot = -np.asarray(cam2world)[:, :3, 3] / np.linalg.norm(
        np.asarray(cam2world)[:, :3, 3], axis=-1, keepdims=True
    )
    assert (np.sum(centre_ray * to_pivot, -1) > np.cos(1.5 / RESOLUTION)).all()  # cameras look at the pivot

"""The toy 3D world: the frontal view is the 2D toy face, depths are the proxy's closed form, turning the head
moves its features the right way, and the data source's records."""

import math

import numpy as np
import pytest

from cdiff_jax.data import toy_faces
from cdiff_jax.data import toy_faces_3d as world


@pytest.fixture(scope="module")
def face():
    example = toy_faces.make_example(toy_faces.example_seed(0, 3))
    return example["image"].astype(np.float32) / 127.5 - 1, example["labels"]


def test_the_frontal_view_is_the_2d_face(face):
    image, labels = face
    view = world.render(image, labels, world.FRONTAL)
    np.testing.assert_allclose(view["image"][0], image, atol=1e-5)
    np.testing.assert_array_equal(view["labels"][0], labels)


def test_depths_are_the_proxy_s_closed_form():
    """Frontal: the centre ray meets the ellipsoid's front, a corner ray the background plane."""
    points, depth, on_head = world.cast(world.FRONTAL, 64)
    depth = depth.reshape(64, 64)
    proxy = world.PROXY
    cx, cy, cz = proxy.head_centre
    a, b, c = proxy.head_axes
    # the ray through pixel (32, 32) passes x = y = 0 up to half a pixel: the ellipsoid's depth there
    front = cz + c * math.sqrt(max(0.0, 1 - (cx / a) ** 2 - (cy / b) ** 2))
    assert abs(depth[32, 32] - (world.RADIUS - front)) < 2e-3
    assert on_head.reshape(64, 64)[32, 32] and not on_head.reshape(64, 64)[0, 0]
    np.testing.assert_allclose(points.reshape(64, 64, 3)[0, 0, 2], proxy.plane_z, atol=1e-9)
    assert depth[0, 0] > world.RADIUS - proxy.plane_z  # an oblique ray is longer than the axis


def _centroid_x(mask):
    return np.nonzero(mask)[1].mean()


def test_turning_moves_the_nose_across_the_face(face):
    """At positive yaw the camera moves round to world +x (the frontal image's right): the nose, which sticks out
    furthest towards the camera, shifts to image-left relative to the face outline; mirrored at negative yaw."""
    image, labels = face
    views = world.render(image, labels, world.cameras([-0.4, 0.0, 0.4], [0.0, 0.0, 0.0]))["labels"]
    offsets = [_centroid_x(v == toy_faces.NOSE) - _centroid_x(v == toy_faces.SKIN) for v in views]
    assert offsets[2] < offsets[1] - 0.5 and offsets[0] > offsets[1] + 0.5


def test_views_beyond_the_world_are_refused():
    with pytest.raises(ValueError, match="yaw within"):
        world.cameras([0.7], [0.0])


def test_records_and_model_inputs():
    source = world.ToyViews(seed=5, identities=3)
    record = source[7]
    assert int(record["identity"]) == 7 % 3 and record["camera"].shape == (25,)
    assert record["image"].shape == (64, 64, 3) and -1 <= record["image"].min() <= record["image"].max() <= 1
    np.testing.assert_array_equal(source[7]["camera"], record["camera"])  # a pure function of the index
    assert not np.array_equal(source[10]["camera"], record["camera"])  # the same identity, another view
    face = source.face(1)
    view = world.render(face["image"].astype(np.float32) / 127.5 - 1, face["labels"], record["camera"][None])
    np.testing.assert_array_equal(record["depth"], view["depth"][0])  # the exact depth of the record's view
    assert record["depth"].shape == (64, 64, 1)
    small = world.ViewInputs(16).map(record)
    np.testing.assert_allclose(small["image"][0, 0], record["image"][:4, :4].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(small["depth"][3, 2], record["depth"][12:16, 8:12].mean(axis=(0, 1)), rtol=1e-6)

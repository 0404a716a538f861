"""The volume renderer against closed forms: a sphere's depth and silhouette, the
inverse-CDF sampler and the ray marcher's quadrature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdiff_jax.cameras import orbit_cameras, rays, split_labels
from cdiff_jax.nn import volume_rendering as vr

FOV = 18.837
RESOLUTION = 24


def cameras(yaws, pitches):
    """(cam2world, intrinsics) of cameras on EG3D's orbit around the origin."""
    return split_labels(jnp.asarray(orbit_cameras(yaws, pitches, radius=2.7, pivot=(0, 0, 0), fov_degrees=FOV)))


def sphere_field(radius):
    """Dense inside a sphere at the origin, empty outside; features = the point itself."""

    def field(points):
        inside = jnp.linalg.norm(points, axis=-1, keepdims=True) < radius
        return points, jnp.where(inside, 400.0, -30.0)

    return field


def ray_sphere(origins, directions, radius):
    """Closed-form first hit depth of each ray (NaN on a miss) and the ray's closest distance to the centre."""
    b = np.sum(origins * directions, -1)
    closest = np.linalg.norm(origins - b[..., None] * directions, axis=-1)
    hit = -b - np.sqrt(np.maximum(radius**2 - closest**2, 0))
    return np.where(closest < radius, hit, np.nan), closest


@pytest.mark.slow
def test_sphere_depth_and_silhouette():
    radius, start, end = 0.25, 2.0, 3.4  # the view spans about +-0.45 at the centre
    cam2world, k = cameras([0.0, 0.6], [0.0, -0.3])
    origins, directions = rays(cam2world, k, RESOLUTION)
    draws = vr.RenderDraws(
        *(jax.random.uniform(key, (2, RESOLUTION**2, 32)) for key in jax.random.split(jax.random.key(0)))
    )
    rendering = vr.render(sphere_field(radius), origins, directions, draws, ray_start=start, ray_end=end)
    depth, closest = ray_sphere(np.asarray(origins), np.asarray(directions), radius)
    opacity, rendered_depth = np.asarray(rendering.weights_sum[..., 0]), np.asarray(rendering.depth[..., 0])
    hits, misses = closest < radius - 0.02, closest > radius + 0.02
    assert hits.sum() > 50 and misses.sum() > 50
    assert (opacity[hits] > 0.999).all() and (opacity[misses] < 1e-3).all()
    bin_width = (end - start) / 31
    assert np.abs(rendered_depth[hits] - depth[hits]).max() < bin_width
    # importance sampling concentrates the fine samples at the surface of the hit rays
    fine = np.asarray(rendering.depths_fine[..., 0])[hits]
    assert np.median(np.abs(fine - depth[hits][:, None])) < bin_width
    # the composited features are the surface points: on the sphere, within a sample's width
    surface = np.asarray(rendering.features)[hits]
    surface = (surface + 1) / 2  # the marcher maps features from [0, 1] to [-1, 1]; undo to get the point back
    np.testing.assert_allclose(np.linalg.norm(surface, axis=-1), radius, atol=bin_width)


def test_march_of_a_constant_medium_is_beer_lambert():
    """Density d (after softplus(x - 1)) over length L: opacity 1 - exp(-d L), features averaged."""
    depths = jnp.linspace(2.0, 3.0, 65)[None, None, :, None]
    density = 0.8
    raw = jnp.full_like(depths, np.log(np.expm1(density)) + 1)  # inverse of softplus(x - 1)
    colors = jnp.full((1, 1, 65, 2), 0.25)
    marched = vr.march(colors, raw, depths)
    opacity = float(marched.weights.sum())
    np.testing.assert_allclose(opacity, 1 - np.exp(-density * 1.0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(marched.rgb), (0.25 * opacity) * 2 - 1, rtol=1e-5)


def test_sample_pdf_inverts_the_cdf():
    """Uniform weights over [0, 1] bins: samples equal u; all weight in one bin: samples stay in it."""
    bins = jnp.linspace(0.0, 1.0, 11)[None]
    u = jnp.linspace(0.02, 0.98, 7)[None]
    np.testing.assert_allclose(np.asarray(vr.sample_pdf(bins, jnp.ones((1, 10)), u)), np.asarray(u), atol=1e-5)
    weights = jnp.zeros((1, 10)).at[0, 6].set(1.0)
    samples = np.asarray(vr.sample_pdf(bins, weights, u))
    assert ((samples >= 0.6 - 1e-3) & (samples <= 0.7 + 1e-3)).mean() > 0.95


def test_plane_sampling_is_bilinear_with_zero_padding():
    """A plane whose value is its own pixel column: samples inside read the column, outside read zero."""
    size = 8
    column = jnp.broadcast_to(jnp.arange(size, dtype=jnp.float32)[None, :, None], (size, size, 1))
    planes = jnp.broadcast_to(column, (1, 3, size, size, 1))
    points = jnp.array([[[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [5.0, 5.0, 5.0]]])
    samples = np.asarray(vr.sample_planes(planes, points, box_warp=2.0))[0, :, :, 0]  # [3 planes, P]
    # plane 0 reads x, plane 1 reads x, plane 2 reads z (the release's (z, x) projection)
    pixel = lambda c: (c + 1) * size / 2 - 0.5  # noqa: E731 -- align_corners=False
    np.testing.assert_allclose(samples[:, 0], pixel(0.0), atol=1e-5)
    np.testing.assert_allclose(samples[:, 1], [pixel(0.3), pixel(0.3), pixel(0.1)], atol=1e-5)
    np.testing.assert_array_equal(samples[:, 2], 0.0)

"""EG3D's neural volume rendering of tri-planes: plane sampling, ray marching, importance sampling.

Pure functions of arrays, numerically those of EG3D's `RaySampler`, `ImportanceRenderer` and
`MipRayMarcher2` (the rays themselves come from `cdiff_jax.cameras.rays`). Shapes: B cameras, M rays
per camera, S samples per ray, C feature channels.
Tri-planes are [B, 3, H, W, C]; a point is projected onto plane 0 as (x, y), plane 1 as (x, z) and
plane 2 as (z, x) -- the released axis convention (the third plane's axes are not (y, z)), which the
released weights were trained with. The two random draws of a rendering (stratified jitter and the
importance-sampling uniforms) are arguments, so a rendering is reproducible and comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PLANE_AXES = ((0, 1), (0, 2), (2, 0))  # (u -> width, v -> height) coordinates of each plane
TRANSMITTANCE_EPS = 1e-10
PDF_EPS = 1e-5
IMPORTANCE_FLOOR = 0.01


def torch_linspace(start: float, stop: float, count: int) -> np.ndarray:
    """float32 `torch.linspace` (its two-sided stepping, so the depths match to the last bit)."""
    step = np.float32((np.float32(stop) - np.float32(start)) / np.float32(count - 1))
    i = np.arange(count)
    return np.where(
        i < count // 2,
        np.float32(start) + step * i.astype(np.float32),
        np.float32(stop) - step * (count - 1 - i).astype(np.float32),
    ).astype(np.float32)


def stratified_depths(u: jax.Array, ray_start: float, ray_end: float, *, disparity: bool = False) -> jax.Array:
    """[B, M, S, 1] depths: S evenly spaced bins from ray_start to ray_end, each jittered by u [B, M, S] in [0, 1)."""
    count = u.shape[-1]
    if disparity:  # uniform in inverse depth
        t = jnp.asarray(torch_linspace(0.0, 1.0, count)) + u * (1.0 / (count - 1))
        return (1.0 / (1.0 / ray_start * (1.0 - t) + 1.0 / ray_end * t))[..., None]
    delta = (ray_end - ray_start) / (count - 1)
    return (jnp.asarray(torch_linspace(ray_start, ray_end, count)) + u * np.float32(delta))[..., None]


def sample_planes(planes: jax.Array, points: jax.Array, box_warp: float) -> jax.Array:
    """Bilinear samples [B, 3, P, C] of tri-planes [B, 3, H, W, C] at points [B, P, 3] (world units), as
    `grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)`: outside the planes is zero."""
    batch, count, height, width, channels = planes.shape
    points = (2.0 / box_warp) * points
    flat = planes.reshape(batch * count, height * width, channels)
    uv = jnp.stack([points[..., list(axes)] for axes in PLANE_AXES], axis=1).reshape(batch * count, -1, 2)
    ix = ((uv[..., 0] + 1) * width - 1) / 2
    iy = ((uv[..., 1] + 1) * height - 1) / 2
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    out = 0.0
    for cx, wx in ((x0, x0 + 1 - ix), (x0 + 1, ix - x0)):
        for cy, wy in ((y0, y0 + 1 - iy), (y0 + 1, iy - y0)):
            inside = (cx >= 0) & (cx <= width - 1) & (cy >= 0) & (cy <= height - 1)
            index = (jnp.clip(cy, 0, height - 1) * width + jnp.clip(cx, 0, width - 1)).astype(jnp.int32)
            values = jnp.take_along_axis(flat, index[..., None], axis=1)
            out = out + values * jnp.where(inside, wx * wy, 0.0)[..., None]
    return out.reshape(batch, count, -1, channels)


class Marched(NamedTuple):
    rgb: jax.Array  # [B, M, C] composited features, scaled from [0, 1] to [-1, 1]
    depth: jax.Array  # [B, M, 1] expected depth, clamped to the sampled range
    weights: jax.Array  # [B, M, S - 1, 1] contribution of each interval


def march(colors: jax.Array, densities: jax.Array, depths: jax.Array, *, white_back: bool = False) -> Marched:
    """MipRayMarcher2: quadrature over the S - 1 intervals between sorted samples [B, M, S, *].

    Colour and density are averaged over each interval; density is softplus(sigma - 1). The depth of
    rays that see nothing (0 / 0) and every other depth is clamped to [min, max] of all `depths`.
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = jax.nn.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - jnp.exp(-densities_mid * deltas)
    shifted = jnp.concatenate([jnp.ones_like(alpha[:, :, :1]), 1 - alpha + TRANSMITTANCE_EPS], axis=-2)
    weights = alpha * jnp.cumprod(shifted, axis=-2)[:, :, :-1]
    rgb = jnp.sum(weights * colors_mid, axis=-2)
    total = jnp.sum(weights, axis=-2)
    depth = jnp.sum(weights * depths_mid, axis=-2) / total
    depth = jnp.clip(jnp.where(jnp.isnan(depth), jnp.inf, depth), jnp.min(depths), jnp.max(depths))
    if white_back:
        rgb = rgb + 1 - total
    return Marched(rgb * 2 - 1, depth, weights)


def importance_depths(depths: jax.Array, weights: jax.Array, u: jax.Array) -> jax.Array:
    """[B, M, N, 1] depths drawn by inverse CDF from the coarse march's weights [B, M, S - 1, 1].

    The weights are smoothed (max over neighbours, then their mean, + 0.01) and the bins are the
    midpoints of the coarse depths [B, M, S, 1]; u [B, M, N] are the uniforms. Not differentiated.
    """
    depths, weights, u = jax.lax.stop_gradient((depths[..., 0], weights[..., 0], u))
    padded = jnp.pad(weights, ((0, 0), (0, 0), (1, 1)), constant_values=-jnp.inf)
    peaks = jnp.maximum(padded[..., :-1], padded[..., 1:])
    smoothed = (peaks[..., :-1] + peaks[..., 1:]) / 2 + IMPORTANCE_FLOOR
    bins = 0.5 * (depths[..., :-1] + depths[..., 1:])
    return sample_pdf(bins, smoothed[..., 1:-1], u)[..., None]


def sample_pdf(bins: jax.Array, weights: jax.Array, u: jax.Array) -> jax.Array:
    """Inverse-CDF samples [..., N] of the piecewise-linear CDF of `weights` [..., K] over `bins` [..., >= K + 1]."""
    count = weights.shape[-1]
    weights = weights + PDF_EPS
    pdf = weights / jnp.sum(weights, axis=-1, keepdims=True)
    cdf = jnp.concatenate([jnp.zeros_like(pdf[..., :1]), jnp.cumsum(pdf, axis=-1)], axis=-1)
    above_count = jnp.sum(cdf[..., None, :] <= u[..., None], axis=-1)  # searchsorted(cdf, u, right=True)
    below = jnp.maximum(above_count - 1, 0)
    above = jnp.minimum(above_count, count)
    cdf_below, cdf_above = (jnp.take_along_axis(cdf, i, axis=-1) for i in (below, above))
    bins_below, bins_above = (jnp.take_along_axis(bins, i, axis=-1) for i in (below, above))
    denom = cdf_above - cdf_below
    denom = jnp.where(denom < PDF_EPS, 1.0, denom)
    return bins_below + (u - cdf_below) / denom * (bins_above - bins_below)


def merge_by_depth(depths_a: jax.Array, depths_b: jax.Array, values: list[tuple[jax.Array, jax.Array]]):
    """Two sample sets along each ray, depths [B, M, S*, 1], as one sorted by depth; `values` are
    (a, b) pairs of [B, M, S*, C] arrays that follow their depths."""
    depths = jnp.concatenate([depths_a, depths_b], axis=-2)
    order = jnp.argsort(depths, axis=-2, stable=True)

    def gather(x):
        return jnp.take_along_axis(x, jnp.broadcast_to(order, (*order.shape[:-1], x.shape[-1])), axis=-2)

    return gather(depths), [gather(jnp.concatenate(pair, axis=-2)) for pair in values]


class RenderDraws(NamedTuple):
    """The uniforms of one rendering: stratified jitter [B, M, S] and importance sampling [B, M, N]."""

    stratified: jax.Array
    importance: jax.Array


class Rendering(NamedTuple):
    """What the renderer computed for M rays per camera (all [B, M, ...])."""

    features: jax.Array  # [B, M, C] composited features (EG3D: the first three are the raw RGB)
    depth: jax.Array  # [B, M, 1]
    weights_sum: jax.Array  # [B, M, 1] opacity of each ray
    depths_coarse: jax.Array  # [B, M, S, 1]
    sigma_coarse: jax.Array  # [B, M, S, 1] raw density before softplus(x - 1)
    depths_fine: jax.Array  # [B, M, N, 1]
    sigma_fine: jax.Array  # [B, M, N, 1]


# points [B, P, 3] -> features [B, P, C] and raw density [B, P, 1]
Field = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def render(
    field: Field,
    origins: jax.Array,
    directions: jax.Array,
    draws: RenderDraws,
    *,
    ray_start: float,
    ray_end: float,
    disparity: bool = False,
    white_back: bool = False,
) -> Rendering:
    """EG3D's ImportanceRenderer: coarse samples, importance samples drawn from their weights (when
    `draws.importance` has any), then one march over both sorted by depth."""

    def evaluate(depths):
        points = origins[:, :, None] + depths * directions[:, :, None]  # [B, M, S, 3]
        batch, rays, samples, _ = points.shape
        features, sigma = field(points.reshape(batch, -1, 3))
        return features.reshape(batch, rays, samples, -1), sigma.reshape(batch, rays, samples, 1)

    depths_coarse = stratified_depths(draws.stratified, ray_start, ray_end, disparity=disparity)
    features_coarse, sigma_coarse = evaluate(depths_coarse)
    if draws.importance.shape[-1]:
        weights = march(features_coarse, sigma_coarse, depths_coarse, white_back=white_back).weights
        depths_fine = importance_depths(depths_coarse, weights, draws.importance)
        features_fine, sigma_fine = evaluate(depths_fine)
        depths, (features, sigma) = merge_by_depth(
            depths_coarse, depths_fine, [(features_coarse, features_fine), (sigma_coarse, sigma_fine)]
        )
    else:
        depths_fine = sigma_fine = depths_coarse[:, :, :0]
        depths, features, sigma = depths_coarse, features_coarse, sigma_coarse
    marched = march(features, sigma, depths, white_back=white_back)
    return Rendering(
        marched.rgb,
        marched.depth,
        jnp.sum(marched.weights, axis=2),
        depths_coarse,
        sigma_coarse,
        depths_fine,
        sigma_fine,
    )

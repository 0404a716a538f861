"""Bilinear resizing as torch's `F.interpolate(mode='bilinear')` computes it, as separable matrices.

A resize of NHWC images is two small matrix products (rows, then columns), which is exact for
every variant torch offers and runs as plain matmuls on any backend: align_corners True or
False, and the antialiased form, whose triangle filter widens with the downscaling factor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def bilinear_matrix(size_in: int, size_out: int, *, align_corners: bool = False, antialias: bool = False) -> np.ndarray:
    """[size_out, size_in] float32 weights of torch's bilinear resize along one axis."""
    if align_corners:  # torch computes this variant's source positions in float32
        scale = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0)
        return _two_tap(size_in, np.arange(size_out, dtype=np.float32) * scale)
    scale = size_in / size_out
    if antialias and scale > 1:
        return _triangle(size_in, size_out, scale)
    # Upsampling with antialiasing is the plain form up to rounding: the triangle keeps its unit width.
    return _two_tap(size_in, np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.0))


def _two_tap(size_in: int, source: np.ndarray) -> np.ndarray:
    low = np.minimum(np.floor(source).astype(int), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = (source - low).astype(np.float32)
    weights = np.zeros((len(source), size_in), np.float32)
    np.add.at(weights, (np.arange(len(source)), low), 1 - frac)
    np.add.at(weights, (np.arange(len(source)), high), frac)
    return weights


def _triangle(size_in: int, size_out: int, scale: float) -> np.ndarray:
    """torch's antialiased weights: a triangle of half-width `scale` around each output centre, cut
    to the input and renormalised."""
    weights = np.zeros((size_out, size_in), np.float64)
    for i in range(size_out):
        centre = scale * (i + 0.5)
        start = max(int(centre - scale + 0.5), 0)
        stop = min(int(centre + scale + 0.5), size_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(start, stop) - centre + 0.5) / scale))
        weights[i, start:stop] = taps / taps.sum()
    return weights.astype(np.float32)


def resize(
    images: jax.Array, height: int, width: int, *, align_corners: bool = False, antialias: bool = False, precision=None
) -> jax.Array:
    """NHWC images -> [N, height, width, C], bilinear as torch."""
    if images.shape[1:3] == (height, width):
        return images
    rows = bilinear_matrix(images.shape[1], height, align_corners=align_corners, antialias=antialias)
    cols = bilinear_matrix(images.shape[2], width, align_corners=align_corners, antialias=antialias)
    return jnp.einsum("ph,qw,nhwc->npqc", rows, cols, images, precision=precision)

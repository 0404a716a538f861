"""SSIM (Wang et al. 2004) as the common implementations compute it: an 11-tap Gaussian window with
sigma 1.5, K1 0.01, K2 0.03, population statistics, the mean over the positions where the whole
window fits (scikit-image's `structural_similarity(gaussian_weights=True)`, pytorch-msssim) and over
channels. Images are NHWC with a given data range (2 for images in [-1, 1])."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    return (weights / weights.sum()).astype(np.float32)


def _filter(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable 'valid' filtering of [B, H, W, C] along H then W, each channel alone."""
    n = taps.shape[0]
    rows = sum(taps[i] * x[:, i : x.shape[1] - n + 1 + i] for i in range(n))
    return sum(taps[i] * rows[:, :, i : x.shape[2] - n + 1 + i] for i in range(n))


@jax.jit
def _ssim(x, y, data_range):
    taps = jnp.asarray(gaussian_window())
    mu_x, mu_y = _filter(x, taps), _filter(y, taps)
    var_x = _filter(x * x, taps) - mu_x**2
    var_y = _filter(y * y, taps) - mu_y**2
    cov = _filter(x * y, taps) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    index = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(axis=(1, 2, 3))


def ssim(x, y, data_range: float = 2.0) -> jax.Array:
    """SSIM per image of two [B, H, W, C] batches (float32, computed in float32), [B]."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two NHWC batches of one shape, got {x.shape} and {y.shape}")
    if min(x.shape[1:3]) < WINDOW:
        raise ValueError(f"ssim needs images of at least {WINDOW}x{WINDOW} pixels, got {x.shape[1]}x{x.shape[2]}")
    return _ssim(x, y, jnp.float32(data_range))

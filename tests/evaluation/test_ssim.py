"""SSIM against scikit-image's definition, rebuilt in float64 with scipy's Gaussian filter."""

import numpy as np
import pytest
import scipy.ndimage

from cdiff_jax.evaluation.ssim import K1, K2, SIGMA, WINDOW, ssim


def _reference(x, y, data_range):
    """skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
    channel by channel: Gaussian filtering (truncated to the 11-tap window), the SSIM map, then the mean
    over the positions at least 5 pixels from the border."""
    pad = (WINDOW - 1) // 2
    truncate = pad / SIGMA

    def blur(a):
        return scipy.ndimage.gaussian_filter(a, SIGMA, truncate=truncate, mode="reflect")

    scores = []
    for xi, yi in zip(x.astype(np.float64), y.astype(np.float64)):
        maps = []
        for c in range(x.shape[-1]):
            a, b = xi[..., c], yi[..., c]
            mu_a, mu_b = blur(a), blur(b)
            va, vb, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
            c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
            s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
            maps.append(s[pad:-pad, pad:-pad].mean())
        scores.append(np.mean(maps))
    return np.array(scores)


def test_matches_the_gaussian_window_reference_and_is_one_for_equal_images():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 24, 20, 3)).astype(np.float32)
    smooth = scipy.ndimage.uniform_filter(x, size=(1, 3, 3, 1))
    y = np.clip(smooth + rng.normal(0, 0.1, x.shape), -1, 1).astype(np.float32)
    np.testing.assert_allclose(ssim(x, y), _reference(x, y, 2.0), atol=2e-6)
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-6)
    noisier = np.clip(smooth + rng.normal(0, 0.4, x.shape), -1, 1).astype(np.float32)
    assert np.all(ssim(x, noisier) < ssim(x, y))


def test_rejects_mismatched_or_small_images():
    with pytest.raises(ValueError, match="one shape"):
        ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))

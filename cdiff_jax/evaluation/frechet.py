"""The Frechet distance between two Gaussians fitted to feature vectors (the formula behind FID).

d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). The trace term is computed from the
eigenvalues of sqrt(S1) S2 sqrt(S1), which is symmetric positive semi-definite and has the same
eigenvalues as S1 S2, so a symmetric eigensolver suffices: unlike a general matrix square root it
never returns complex parts, and it stays exact for the rank-deficient covariances that fewer
samples than feature dimensions produce. Everything is float64.
"""

from __future__ import annotations

import numpy as np


def _finite(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds non-finite values (NaN or inf)")
    return array


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D [N, D] array, got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {features.shape[0]}")
    if features.shape[1] < 1:
        raise ValueError(f"features must have at least one dimension, got shape {features.shape}")
    _finite(features, "features")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _check_gaussian(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a 1-D [D] mean, got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{name} must be a [D, D] covariance with D = {mu.shape[0]}, got shape {sigma.shape}")
    return _finite(mu, f"mu{name}"), _finite(sigma, f"sigma{name}")


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root; rounding can make zero eigenvalues slightly negative, so they are clipped."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), as a float64 scalar."""
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "1")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}")
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    # The true value is >= 0; only rounding (e.g. comparing a set with itself) can take it below.
    return float(max(distance, 0.0))

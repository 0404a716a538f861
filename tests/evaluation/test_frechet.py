"""Frechet distance: agreement with the scipy.linalg.sqrtm formula, identities, and input checks."""

import numpy as np
import pytest
import scipy.linalg

from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics


def _sqrtm_reference(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with a general matrix square root of the product."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def _rounding_bound(mu1, sigma1, mu2, sigma2) -> float:
    """How far float64 rounding can move the computed distance of rank-deficient covariances.

    A symmetric eigensolver is backward stable: it returns the eigenvalues of a matrix within about
    D * eps * ||S|| of the true ones, so a zero eigenvalue can come back as +-D * eps * ||S||. The square
    roots (of S1, then of sqrt(S1) S2 sqrt(S1)) amplify that to about sqrt(D * eps * ||S1|| * ||S2||) for each
    eigenvalue in a null direction, and the trace term counts them twice. The rest of the formula (sums and
    products of well-scaled terms) adds relative errors of order D * eps. Which way each rounding goes
    depends on the CPU's BLAS and LAPACK kernels, so this, not a fixed rtol, is what one machine can promise
    about another's result (or about the distance with its arguments swapped).
    """
    d = mu1.shape[0]
    null = d - min(np.linalg.matrix_rank(sigma1), np.linalg.matrix_rank(sigma2))
    eps = np.finfo(np.float64).eps
    norms = np.linalg.norm(sigma1, 2) * np.linalg.norm(sigma2, 2)
    diff = mu1 - mu2
    return 2 * null * np.sqrt(d * eps * norms) + d * eps * (diff @ diff + np.trace(sigma1) + np.trace(sigma2))


def _features(rng, n, d, rank=None, shift=0.0):
    """Correlated features; with `rank`, they span only a `rank`-dimensional subspace."""
    mixing = rng.normal(size=(rank or d, d))
    return rng.normal(size=(n, rank or d)) @ mixing + shift


@pytest.mark.parametrize("d", [1, 3, 16, 64])
def test_matches_sqrtm_formula(d):
    rng = np.random.default_rng(d)
    a = gaussian_statistics(_features(rng, 500, d))
    b = gaussian_statistics(_features(rng, 400, d, shift=0.3))
    expected = _sqrtm_reference(*a, *b)
    assert expected > 0
    np.testing.assert_allclose(frechet_distance(*a, *b), expected, rtol=1e-8)


def test_matches_sqrtm_formula_for_rank_deficient_covariances():
    rng = np.random.default_rng(0)
    a = gaussian_statistics(_features(rng, 300, 24, rank=6))
    b = gaussian_statistics(_features(rng, 300, 24, rank=24, shift=0.1))
    assert np.linalg.matrix_rank(a[1]) == 6
    ours, reference = frechet_distance(*a, *b), _sqrtm_reference(*a, *b)
    # Both computations take square roots in the null directions, so each carries the rounding bound.
    bound = 2 * _rounding_bound(*a, *b)
    assert bound < 1e-5 * reference  # the bound still separates a right formula from a wrong one
    assert abs(ours - reference) <= bound


def test_fewer_samples_than_dimensions_is_finite_and_symmetric():
    rng = np.random.default_rng(1)
    a = gaussian_statistics(_features(rng, 10, 32))
    b = gaussian_statistics(_features(rng, 12, 32))
    d_ab, d_ba = frechet_distance(*a, *b), frechet_distance(*b, *a)
    assert np.isfinite(d_ab) and d_ab > 0
    # Swapping the arguments takes the square roots of different matrices: the two results agree to the
    # rounding bound (2e-9 relative seen on one AMD EPYC, 0 on other machines), not to a fixed rtol.
    bound = _rounding_bound(*a, *b)
    assert bound < 1e-5 * d_ab
    assert abs(d_ab - d_ba) <= bound


def test_identical_sets_are_at_distance_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(2)
    a = gaussian_statistics(_features(rng, 200, 20))
    b = gaussian_statistics(_features(rng, 200, 20, shift=1.0))
    assert frechet_distance(*a, *a) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(frechet_distance(*a, *b), frechet_distance(*b, *a), rtol=1e-10)


def test_mean_shift_alone_adds_its_squared_norm():
    rng = np.random.default_rng(3)
    features = _features(rng, 100, 8)
    shift = np.arange(8.0)
    mu, sigma = gaussian_statistics(features)
    mu2, sigma2 = gaussian_statistics(features + shift)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(shift @ shift, rel=1e-9)


def test_statistics_are_float64_mean_and_unbiased_covariance():
    features = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]], np.float32)
    mu, sigma = gaussian_statistics(features)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [2.0, 2.0])
    np.testing.assert_allclose(sigma, [[4.0, 3.0], [3.0, 3.0]])
    assert gaussian_statistics(np.ones((5, 1)))[1].shape == (1, 1)


@pytest.mark.parametrize(
    "features, match",
    [
        (np.zeros(5), "2-D"),
        (np.zeros((1, 4)), "at least 2"),
        (np.zeros((3, 0)), "at least one dimension"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "non-finite"),
    ],
)
def test_statistics_reject_bad_features(features, match):
    with pytest.raises(ValueError, match=match):
        gaussian_statistics(features)


def test_distance_rejects_bad_shapes():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="mu1 must be a 1-D"):
        frechet_distance(np.zeros((3, 1)), sigma, mu, sigma)
    with pytest.raises(ValueError, match="sigma2 must be a"):
        frechet_distance(mu, sigma, mu, np.eye(4))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu, sigma, mu, np.full((3, 3), np.inf))

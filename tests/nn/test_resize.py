"""Bilinear resize matrices: torch's three variants (align_corners, half-pixel, antialiased)."""

import numpy as np
import pytest

from cdiff_jax.nn.resize import bilinear_matrix, resize


def test_half_pixel_weights_sample_at_the_pixel_centres():
    """Up (64 -> 299) and down (512 -> 299), as pytorch-fid resizes: rows sum to one, two taps at most."""
    for size_in in (64, 512):
        weights = bilinear_matrix(size_in, 299)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
        centres = weights @ np.arange(size_in)
        expected = np.clip((np.arange(299) + 0.5) * size_in / 299 - 0.5, 0, size_in - 1)
        np.testing.assert_allclose(centres, expected, atol=1e-4)
    assert (np.count_nonzero(bilinear_matrix(512, 299), axis=1) <= 2).all()  # no antialiasing filter


def test_align_corners_keeps_both_end_pixels():
    weights = bilinear_matrix(5, 9, align_corners=True)
    np.testing.assert_allclose(weights @ np.arange(5), np.arange(9) / 2, atol=1e-6)


def test_antialiased_downscaling_is_a_normalised_triangle_of_the_scale_s_width():
    """4 -> 2: each output averages three inputs with weights 3:3:1 (torch's kernel, worked by hand)."""
    np.testing.assert_allclose(
        bilinear_matrix(4, 2, antialias=True), np.array([[3, 3, 1, 0], [0, 1, 3, 3]]) / 7, rtol=1e-6
    )
    weights = bilinear_matrix(256, 64, antialias=True)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert np.count_nonzero(weights[10]) == 8  # a support of twice the factor, not two taps
    interior = slice(2, 62)  # rows whose triangle lies inside the input (the edges are cut and renormalised)
    np.testing.assert_allclose(
        (weights @ np.arange(256))[interior], ((np.arange(64) + 0.5) * 4 - 0.5)[interior], atol=1e-4
    )


@pytest.mark.parametrize("size_in, size_out", [(16, 64), (37, 128)])
def test_antialiasing_does_not_change_upsampling(size_in, size_out):
    np.testing.assert_array_equal(
        bilinear_matrix(size_in, size_out, antialias=True), bilinear_matrix(size_in, size_out)
    )


def test_resize_is_separable_and_skips_same_size():
    images = np.random.default_rng(0).normal(size=(2, 6, 4, 3)).astype(np.float32)
    out = np.asarray(resize(images, 3, 8, antialias=True))
    expected = np.einsum("ph,qw,nhwc->npqc", bilinear_matrix(6, 3, antialias=True), bilinear_matrix(4, 8), images)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert resize(images, 6, 4) is images

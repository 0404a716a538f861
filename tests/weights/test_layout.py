"""torch layouts <-> ours: only kernels move, the way torch's maths needs, and the export moves them back."""

import numpy as np

from cdiff_jax.weights.layout import to_flax_layout, to_torch_layout


def test_conv_kernel_computes_the_same_correlation():
    rng = np.random.default_rng(0)
    torch_w = rng.normal(size=(5, 3, 2, 2))  # [O, I, kh, kw]
    patch = rng.normal(size=(2, 2, 3))  # one [kh, kw, I] window
    ours = to_flax_layout(torch_w, "kernel")
    assert ours.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(np.einsum("hwi,hwio->o", patch, ours), np.einsum("hwi,oihw->o", patch, torch_w))


def test_linear_kernel_is_transposed_and_other_leaves_are_kept():
    w = np.arange(6.0).reshape(2, 3)  # torch Linear(3 -> 2)
    x = np.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(x @ to_flax_layout(w, "kernel"), w @ x)
    for leaf in ("bias", "scale", "embedding"):
        assert to_flax_layout(w, leaf) is w


def test_to_torch_layout_inverts_to_flax_layout():
    rng = np.random.default_rng(0)
    for shape, leaf in [
        ((3, 3, 4, 5), "kernel"),
        ((4, 5), "kernel"),
        ((5,), "bias"),
        ((6, 7), "embedding"),
        ((2, 3), "scale"),
        ((), "bias"),
    ]:
        ours = rng.normal(size=shape)
        torch = to_torch_layout(ours, leaf)
        np.testing.assert_array_equal(to_flax_layout(torch, leaf), ours)
    assert to_torch_layout(np.zeros((3, 3, 4, 5)), "kernel").shape == (5, 4, 3, 3)

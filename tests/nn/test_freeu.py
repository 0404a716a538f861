"""FreeU as the official FreeU scripts apply it: where, which channels, and the Fourier filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import reference_system
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.nn.freeu import FreeU, apply_freeu, fourier_filter
from cdiff_jax.nn.unet import UNet


def numpy_filter(x: np.ndarray, scale: float, threshold: int = 1) -> np.ndarray:
    """The official filter on NCHW arrays: fftn and fftshift over H, W; a centred box times `scale`; back."""
    spectrum = np.fft.fftshift(np.fft.fftn(x, axes=(-2, -1)), axes=(-2, -1))
    mask = np.ones(x.shape)
    crow, ccol = x.shape[-2] // 2, x.shape[-1] // 2
    mask[..., crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    return np.fft.ifftn(np.fft.ifftshift(spectrum * mask, axes=(-2, -1)), axes=(-2, -1)).real


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 6, 2)])
def test_the_filter_is_the_official_one(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    want = numpy_filter(x.transpose(0, 3, 1, 2), 0.3).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(fourier_filter(jnp.asarray(x), 0.3), want, atol=1e-5)
    np.testing.assert_allclose(fourier_filter(jnp.asarray(x), 1.0), x, atol=1e-5)  # s = 1: the identity


def test_a_zero_scale_removes_the_mean_with_the_low_frequencies():
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 2)).astype(np.float32) + 5.0
    filtered = np.asarray(fourier_filter(jnp.asarray(x), 0.0))
    np.testing.assert_allclose(filtered.mean(axis=(1, 2)), 0.0, atol=1e-5)


def test_only_the_named_widths_change_and_only_half_of_h():
    rng = np.random.default_rng(2)
    h, skip = (jnp.asarray(rng.normal(size=(1, 4, 4, 8)).astype(np.float32)) for _ in range(2))
    freeu = FreeU(b1=1.5, b2=2.0, s1=0.5, s2=1.0)
    new_h, new_skip = apply_freeu(h, skip, freeu, (8, 6))
    np.testing.assert_allclose(new_h[..., :4], 1.5 * h[..., :4], rtol=1e-6)
    np.testing.assert_array_equal(new_h[..., 4:], h[..., 4:])
    np.testing.assert_allclose(new_skip, fourier_filter(skip, 0.5), atol=1e-6)
    untouched = apply_freeu(h, skip, freeu, (6, 4))
    np.testing.assert_array_equal(untouched[0], h)
    np.testing.assert_array_equal(untouched[1], skip)


@pytest.mark.slow
def test_the_released_experts_take_freeu_at_the_official_widths():
    cfg = load_config("released.py:512_codiff")
    for modality in cfg.modalities.values():
        unet = nnx.eval_shape(lambda c=modality.expert: UNet(c, rngs=nnx.Rngs(0)))
        assert unet.freeu_widths() == (576, 384)  # the channel counts the official FreeU code names


@pytest.mark.slow
def test_an_expert_with_unit_factors_is_unchanged_and_with_others_is_not(fixtures_root):
    expert = reference_system(fixtures_root, "text").modalities["text"].expert
    graphdef, state = nnx.split(expert)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, expert.cfg.in_channels)).astype(np.float32))
    context = jnp.asarray(rng.normal(size=(2, 5, expert.cfg.context_dim)).astype(np.float32))
    t = jnp.asarray([10, 600])
    run = jax.jit(lambda s, freeu=None: nnx.merge(graphdef, s)(x, t, context, freeu), static_argnums=1)
    plain = np.asarray(run(state))
    np.testing.assert_allclose(run(state, FreeU(1.0, 1.0, 1.0, 1.0)), plain, atol=1e-5 * np.abs(plain).max())
    assert np.abs(np.asarray(run(state, FreeU(1.3, 1.4, 0.9, 0.2))) - plain).max() > 1e-3 * np.abs(plain).max()

"""Expert UNet parity with the reference: eps, time embedding and every block's output."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close_rel, nhwc, reference_system
from cdiff_jax.nn import layers
from cdiff_jax.nn.unet import timestep_embedding

FORMATS = ["ckpt", "safetensors"]


def _check_expert(fixtures_root, kind, folder, fmt, context_of):
    io = np.load(fixtures_root / folder / "io.npz")
    modality = reference_system(fixtures_root, kind, fmt).modalities[kind]
    context = context_of(modality, io)
    eps, inter = modality.expert.forward_with_intermediates(nhwc(io["x_t"]), jnp.asarray(io["t"]), context)
    assert_close_rel(eps, nhwc(io["eps"]), name="eps")
    names = [n for n in io.files if n.startswith("inter_")]
    assert names, "fixture has no intermediates"
    for name in names:
        ref = io[name]
        assert_close_rel(inter[name.removeprefix("inter_")], nhwc(ref) if ref.ndim == 4 else ref, name=name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_expert(fixtures_root, fmt):
    _check_expert(fixtures_root, "text", "text_unet", fmt, lambda m, io: jnp.asarray(io["context"]))


@pytest.mark.parametrize("form", ["winograd", "matmul"])
def test_text_expert_with_every_3x3_convolution_in_one_fast_form(fixtures_root, form, monkeypatch):
    """The tiny fixture models are below the sizes where `layers.conv_general_dilated` leaves XLA's
    convolution, so each fast form is forced here wherever it applies."""
    if form == "winograd":
        monkeypatch.setattr(layers, "WINOGRAD_MIN_POSITIONS", 0)
        monkeypatch.setattr(layers, "WINOGRAD_MIN_CHANNELS", 0)
    else:
        monkeypatch.setattr(layers, "MATMUL_CONV_MAX_POSITIONS", 1 << 30)
        monkeypatch.setattr(layers, "MATMUL_CONV_MIN_FEATURES", 0)
    _check_expert(fixtures_root, "text", "text_unet", "safetensors", lambda m, io: jnp.asarray(io["context"]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_mask_expert_from_its_own_encoder(fixtures_root, fmt):
    def context(modality, io):
        ctx = modality.encoder(jnp.asarray(io["mask_onehot"]))
        assert_close_rel(ctx, io["context"], name="mask context")
        return ctx

    _check_expert(fixtures_root, "mask", "mask_unet", fmt, context)


def test_timestep_embedding_is_cos_first(fixtures_root):
    io = np.load(fixtures_root / "text_unet/io.npz")
    dim = io["t_emb_sinusoidal"].shape[1]
    assert_close_rel(timestep_embedding(jnp.asarray(io["t"]), dim), io["t_emb_sinusoidal"], name="t_emb")
    emb = timestep_embedding(jnp.asarray([0]), 8)
    np.testing.assert_array_equal(emb[0, :4], 1.0)  # cos(0) first
    np.testing.assert_array_equal(emb[0, 4:], 0.0)


def test_fresh_unet_outputs_zero():
    """The reference zero-initialises the output conv, so an untrained UNet predicts exactly 0."""
    from flax import nnx

    from cdiff_jax.config import UNetConfig
    from cdiff_jax.nn.unet import UNet

    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                     num_heads=4, context_dim=8, out_channels=1)
    unet = UNet(cfg, rngs=nnx.Rngs(0))
    out = unet(jnp.ones((2, 8, 8, 3)), jnp.asarray([3, 500]), jnp.ones((2, 5, 8)))
    assert out.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(out, 0.0)

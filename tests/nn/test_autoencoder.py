"""Autoencoder parity with the reference: posterior, samples, reconstructions, intermediates."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, nhwc, reference_system, with_forms
from flax import nnx

from cdiff_jax.config import AutoencoderConfig
from cdiff_jax.nn.autoencoder import AutoencoderKL, posterior_sample
from cdiff_jax.nn.kernels import PLAIN_FORMS, KernelForms


@pytest.fixture(scope="module", params=["ckpt", "safetensors"])
def reference(fixtures_root, request):
    return (
        reference_system(fixtures_root, "vae", request.param).autoencoder,
        np.load(fixtures_root / "autoencoder/io.npz"),
    )


def test_posterior_and_reconstructions(reference):
    ae, io = reference
    mean, logvar = ae.encode(nhwc(io["x_image"]))
    assert_close_rel(mean, nhwc(io["posterior_mean"]), name="mean")
    assert_close_rel(logvar, nhwc(io["posterior_logvar"]), name="logvar")
    assert_close_rel(jnp.exp(0.5 * logvar), nhwc(io["posterior_std"]), name="std")
    z = posterior_sample(mean, logvar, nhwc(io["posterior_noise"]))
    assert_close_rel(z, nhwc(io["z_sample"]), name="z_sample")
    assert_close_rel(mean, nhwc(io["z_mode"]), name="z_mode")
    assert_close_rel(ae.decode(nhwc(io["z_sample"])), nhwc(io["x_rec_from_z_sample"]), name="x_rec_sample")
    assert_close_rel(ae.decode(nhwc(io["z_mode"])), nhwc(io["x_rec_from_z_mode"]), name="x_rec_mode")


@pytest.mark.parametrize(
    "forms", [KernelForms(conv="winograd"), KernelForms(conv="lax"), PLAIN_FORMS], ids=["winograd", "phases", "plain"]
)
def test_decoding_in_each_kernel_form(reference, forms):
    """The fixture's autoencoder is below the sizes that take Winograd, so it is forced here; the
    upsampling phases without the CPU rule's small-size shortcut, and the plain forms of GPU and TPU."""
    ae, io = reference
    ae = with_forms(ae, forms)
    assert_close_rel(ae.decode(nhwc(io["z_sample"])), nhwc(io["x_rec_from_z_sample"]), name="x_rec_sample")


def test_latent_scaling_of_the_ldm_first_stage(fixtures_root):
    """Inside an LDM the autoencoder carries the LDM's scale_factor and encodes a posterior sample."""
    io = np.load(fixtures_root / "autoencoder/io.npz")
    ae = reference_system(fixtures_root, "text").autoencoder
    assert ae.cfg.scale_factor == pytest.approx(float(io["scale_factor"]))
    z = ae.encode_latent(nhwc(io["x_image"]), nhwc(io["posterior_noise"]))
    assert_close_rel(z, nhwc(io["z_ldm_scaled"]), name="z_ldm_scaled")
    assert_close_rel(ae.decode_latent(z), nhwc(io["x_rec_from_z_sample"]), name="decode_latent")


def test_a_latent_shift_centres_the_diffusion_latents_and_decoding_undoes_it(fixtures_root):
    """Models we train subtract each channel's posterior mean before scaling (LDM subtracts nothing)."""
    io = np.load(fixtures_root / "autoencoder/io.npz")
    plain = reference_system(fixtures_root, "text").autoencoder
    x, noise = nhwc(io["x_image"]), nhwc(io["posterior_noise"])
    mean = np.asarray(plain.encode(x)[0], np.float64).mean(axis=(0, 1, 2))
    shifted = AutoencoderKL(dataclasses.replace(plain.cfg, latent_shift=tuple(mean)), rngs=nnx.Rngs(0))
    nnx.update(shifted, nnx.state(plain))
    z = shifted.encode_latent(x, jnp.zeros_like(noise))
    assert np.abs(np.asarray(z).mean(axis=(0, 1, 2))).max() < 1e-5 * np.abs(np.asarray(z)).max()
    assert_close_rel(
        shifted.encode_latent(x, noise),
        plain.encode_latent(x, noise) - plain.cfg.scale_factor * mean,
        name="shifted latent",
    )
    assert_close_rel(
        shifted.decode_latent(shifted.encode_latent(x, noise)),
        plain.decode_latent(plain.encode_latent(x, noise)),
        name="decoded",
    )


def test_a_latent_shift_needs_one_entry_per_channel():
    with pytest.raises(ValueError, match="one per latent channel"):
        AutoencoderConfig(embed_dim=4, latent_shift=(0.1, 0.2, 0.3))


def test_named_intermediates(reference):
    ae, io = reference
    _, enc = ae.encoder.forward_with_intermediates(nhwc(io["x_image"]))
    enc["out_h"] = ae.encoder(nhwc(io["x_image"]))
    _, dec = ae.decoder.forward_with_intermediates(ae.post_quant_conv(nhwc(io["z_sample"])))
    dec["post_quant_conv_out"] = ae.post_quant_conv(nhwc(io["z_sample"]))
    assert_close_rel(ae.quant_conv(enc["out_h"]), nhwc(io["moments"]), name="moments")
    checked = 0
    for name in io.files:
        side, _, rest = name.partition("_")
        if side not in ("enc", "dec"):
            continue
        batch0 = rest.endswith("_b0")
        ours = (enc if side == "enc" else dec)[rest.removesuffix("_b0")]
        assert_close_rel(ours[:1] if batch0 else ours, nhwc(io[name]), name=name)
        checked += 1
    assert checked >= 4, "expected named encoder/decoder intermediates in the fixture"

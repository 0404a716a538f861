"""Expert UNet parity with the reference: eps, time embedding and every block's output."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import assert_close_rel, nhwc, reference_system, with_forms
from cdiff_jax.config import UNetConfig
from cdiff_jax.nn.kernels import CPU_FORMS, PLAIN_FORMS, KernelForms, kernel_forms
from cdiff_jax.nn.unet import UNet, timestep_embedding

FORMATS = ["ckpt", "safetensors"]


def _check_expert(fixtures_root, kind, folder, fmt, context_of, forms=None):
    io = np.load(fixtures_root / folder / "io.npz")
    modality = reference_system(fixtures_root, kind, fmt).modalities[kind]
    context = context_of(modality, io)
    expert = modality.expert if forms is None else with_forms(modality.expert, forms)
    eps, inter = expert.forward_with_intermediates(nhwc(io["x_t"]), jnp.asarray(io["t"]), context)
    assert_close_rel(eps, nhwc(io["eps"]), name="eps")
    names = [n for n in io.files if n.startswith("inter_")]
    assert names, "fixture has no intermediates"
    for name in names:
        ref = io[name]
        assert_close_rel(inter[name.removeprefix("inter_")], nhwc(ref) if ref.ndim == 4 else ref, name=name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_expert(fixtures_root, fmt):
    _check_expert(fixtures_root, "text", "text_unet", fmt, lambda m, io: jnp.asarray(io["context"]))


@pytest.mark.parametrize("forms", [KernelForms(conv="winograd"), KernelForms(conv="matmul"), PLAIN_FORMS],
                         ids=["winograd", "matmul", "plain"])
def test_text_expert_in_each_kernel_form(fixtures_root, forms):
    """The tiny fixture models are below the sizes where the CPU rule leaves XLA's convolution, so each
    fast form is forced here wherever it applies; the plain forms are what GPU and TPU get."""
    _check_expert(fixtures_root, "text", "text_unet", "safetensors", lambda m, io: jnp.asarray(io["context"]),
                  forms)


SMALL = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(1, 2), num_heads=4, context_dim=8)


def _random_unet(forms):
    """A small UNet with every weight random (the fresh output conv is zero), built in `forms`."""
    unet = UNet(SMALL, rngs=nnx.Rngs(0), forms=forms)
    state = nnx.state(unet, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.update(unet, jax.tree.unflatten(treedef, [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]))
    return unet


def _small_inputs(batch=2, size=8, tokens=5):
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(batch, size, size, SMALL.in_channels)), jnp.float32),
            jnp.asarray([3, 700][:batch]), jnp.asarray(rng.normal(size=(batch, tokens, SMALL.context_dim)), jnp.float32))


def test_a_unet_in_the_plain_forms_of_other_backends_matches_the_cpu_forms():
    assert kernel_forms("gpu") == kernel_forms("tpu") == PLAIN_FORMS
    cpu = _random_unet(CPU_FORMS)
    plain = with_forms(cpu, kernel_forms("gpu"))
    x, t, context = _small_inputs()
    expected = cpu(x, t, context)
    assert np.abs(np.asarray(expected)).max() > 0
    assert_close_rel(plain(x, t, context), expected, tol=1e-5, name="plain-form eps")


@pytest.mark.parametrize("base", [CPU_FORMS, PLAIN_FORMS, KernelForms(conv="winograd"), KernelForms(conv="matmul")],
                         ids=["cpu", "plain", "winograd", "matmul"])
def test_every_product_of_a_lowered_unet_carries_the_requested_precision(base):
    forms = dataclasses.replace(base, precision="highest")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(SMALL, rngs=nnx.Rngs(0), forms=forms)))
    program = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a)).lower(state, *_small_inputs()).as_text()
    products = [line for line in program.splitlines() if "stablehlo.dot_general" in line
                or "stablehlo.convolution" in line]
    assert len(products) > 20
    missing = [line for line in products if "HIGHEST" not in line]
    assert not missing, f"{len(missing)} of {len(products)} products without precision HIGHEST: {missing[:2]}"


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

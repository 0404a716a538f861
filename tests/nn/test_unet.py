"""Expert UNet parity with the reference: eps, time embedding and every block's output."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, nhwc, reference_system, with_forms
from flax import nnx

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


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_text_expert(fixtures_root, fmt):
    _check_expert(fixtures_root, "text", "text_unet", fmt, lambda m, io: jnp.asarray(io["context"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "forms",
    [KernelForms(conv="winograd"), KernelForms(conv="matmul"), PLAIN_FORMS],
    ids=["winograd", "matmul", "plain"],
)
def test_text_expert_in_each_kernel_form(fixtures_root, forms):
    """The tiny fixture models are below the sizes where the CPU rule leaves XLA's convolution, so each
    fast form is forced here wherever it applies; the plain forms are what GPU and TPU get."""
    _check_expert(fixtures_root, "text", "text_unet", "safetensors", lambda m, io: jnp.asarray(io["context"]), forms)


SMALL = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(1, 2),
    num_heads=4,
    context_dim=8,
)


def _random_model(cfg, forms=None):
    """A UNet with every weight random (a fresh one's output conv is zero), built without eager init."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0), forms=forms)))
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(1)
    return nnx.merge(
        graphdef, jax.tree.unflatten(treedef, [jnp.asarray(0.2 * rng.normal(size=x.shape), x.dtype) for x in leaves])
    )


def _inputs(cfg, batch=2, size=8, tokens=5):
    rng = np.random.default_rng(0)
    return (
        jnp.asarray(rng.normal(size=(batch, size, size, cfg.in_channels)), jnp.float32),
        jnp.asarray(np.linspace(3, 900, batch).astype(int)),
        jnp.asarray(rng.normal(size=(batch, tokens, cfg.context_dim)), jnp.float32),
    )


def _jitted(unet, method):
    """method(unet, *args) as a jitted function of (graphdef, state), called on args."""
    graphdef, state = nnx.split(unet)
    return lambda *args: jax.jit(lambda s, *a: method(nnx.merge(graphdef, s), *a))(state, *args)


@pytest.mark.slow
def test_a_unet_in_the_plain_forms_of_other_backends_matches_the_cpu_forms():
    assert kernel_forms("gpu") == kernel_forms("tpu") == PLAIN_FORMS
    cpu = _random_model(SMALL, CPU_FORMS)
    plain = with_forms(cpu, kernel_forms("gpu"))
    x, t, context = _inputs(SMALL)
    expected = _jitted(cpu, lambda u, *a: u(*a))(x, t, context)
    assert np.abs(np.asarray(expected)).max() > 0
    assert_close_rel(_jitted(plain, lambda u, *a: u(*a))(x, t, context), expected, tol=1e-5, name="plain-form eps")


@pytest.mark.parametrize(
    "base",
    [CPU_FORMS, PLAIN_FORMS, KernelForms(conv="winograd"), KernelForms(conv="matmul")],
    ids=["cpu", "plain", "winograd", "matmul"],
)
def test_every_product_of_a_lowered_unet_carries_the_requested_precision(base):
    forms = dataclasses.replace(base, precision="highest")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(SMALL, rngs=nnx.Rngs(0), forms=forms)))
    program = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a)).lower(state, *_inputs(SMALL)).as_text()
    products = [
        line for line in program.splitlines() if "stablehlo.dot_general" in line or "stablehlo.convolution" in line
    ]
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


@pytest.mark.slow
def test_fresh_unet_outputs_zero():
    """The reference zero-initialises the output conv, so an untrained UNet predicts exactly 0."""
    from flax import nnx

    from cdiff_jax.config import UNetConfig
    from cdiff_jax.nn.unet import UNet

    cfg = UNetConfig(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
        num_heads=4,
        context_dim=8,
        out_channels=1,
    )
    unet = UNet(cfg, rngs=nnx.Rngs(0))
    out = unet(jnp.ones((2, 8, 8, 3)), jnp.asarray([3, 500]), jnp.ones((2, 5, 8)))
    assert out.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(out, 0.0)


# --- features for DDGI: middle block, up blocks, cross-attention probabilities --------------------

TAPPED = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(2, 4),
    num_heads=4,
    context_dim=8,
)


def _up_path(cfg):
    """(level, has cross-attention, upsamples) of every up block, from the config alone."""
    blocks = []
    for level in reversed(range(len(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            blocks.append((level, 2**level in cfg.attention_resolutions, level > 0 and i == cfg.num_res_blocks))
    return blocks


@pytest.fixture(scope="module")
def tapped_unet():
    return _random_model(TAPPED)


def test_features_have_the_shapes_of_the_tapped_levels_and_probabilities_sum_to_one(tapped_unet):
    x, t, context = _inputs(TAPPED)
    batch, size, tokens = x.shape[0], x.shape[1], context.shape[1]
    path = _up_path(TAPPED)
    everything = tuple(range(len(path)))
    _, features = _jitted(tapped_unet, lambda u, *a: u.forward_with_features(*a, everything))(x, t, context)
    levels = len(TAPPED.channel_mult)
    assert features.middle.shape == (
        batch,
        size >> (levels - 1),
        size >> (levels - 1),
        TAPPED.model_channels * TAPPED.channel_mult[-1],
    )
    with_attention = [i for i, (_, attends, _) in enumerate(path) if attends]
    assert tapped_unet.cross_attention_up_blocks() == tuple(with_attention)
    assert 0 < len(with_attention) < len(path)  # the config has levels with and without cross-attention
    assert sorted(features.cross_attention) == [f"output_block_{i:02d}" for i in with_attention]
    for i, (level, attends, upsamples) in enumerate(path):
        side = (size >> level) * (2 if upsamples else 1)
        assert features.up[f"output_block_{i:02d}"].shape == (
            batch,
            side,
            side,
            TAPPED.model_channels * TAPPED.channel_mult[level],
        )
        if attends:
            p = np.asarray(features.cross_attention[f"output_block_{i:02d}"])
            assert p.shape == (batch, (size >> level) ** 2, tokens)
            assert p.min() >= 0
            np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
            assert p.std(axis=-1).max() > 1e-3  # not uniform: the queries see the context


@pytest.mark.slow
def test_tapping_leaves_eps_bit_identical_and_features_equal_the_intermediates(tapped_unet):
    x, t, context = _inputs(TAPPED)
    chosen = tapped_unet.cross_attention_up_blocks()[-2:]
    plain = _jitted(tapped_unet, lambda u, *a: u(*a))(x, t, context)
    eps, features = _jitted(tapped_unet, lambda u, *a: u.forward_with_features(*a, chosen))(x, t, context)
    assert np.abs(np.asarray(plain)).max() > 0
    np.testing.assert_array_equal(eps, plain)
    _, inter = _jitted(tapped_unet, lambda u, *a: u.forward_with_intermediates(*a))(x, t, context)
    np.testing.assert_array_equal(features.middle, inter["middle_block"])
    assert sorted(features.up) == [f"output_block_{i:02d}" for i in chosen]
    for name, value in features.up.items():
        np.testing.assert_array_equal(value, inter[name])


def _pre_change_forward(unet, x, t, context):
    """The UNet's forward as it was written before taps existed, from the same blocks."""
    emb = unet.time_embedding(t)
    h = unet.conv_in(x)
    skips = [h]
    for block in unet.down_blocks:
        h = block(h, emb, context)
        skips.append(h)
    h = unet.mid_res_2(unet.mid_transformer(unet.mid_res_1(h, emb), context), emb)
    for block in unet.up_blocks:
        h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb, context)
    return unet.final_conv(jax.nn.silu(unet.final_norm(h)))


def test_the_default_program_is_unchanged_by_the_taps(tapped_unet):
    graphdef, state = nnx.split(tapped_unet)
    args = _inputs(TAPPED)

    def program(method):
        def forward(state, *a):
            return method(nnx.merge(graphdef, state), *a)

        return jax.jit(forward).lower(state, *args).as_text()

    default = program(lambda u, *a: u(*a))
    assert default == program(_pre_change_forward)
    assert default == program(lambda u, *a: u.forward_with_features(*a, ())[0])
    tapped = program(lambda u, *a: u.forward_with_features(*a, u.cross_attention_up_blocks()))
    exponentials = lambda text: text.count("stablehlo.exponential")  # noqa: E731
    assert exponentials(tapped) > exponentials(default)  # the taps' softmaxes appear only when asked for


def test_tapping_a_block_that_does_not_exist_is_refused(tapped_unet):
    with pytest.raises(ValueError, match=r"up blocks \[99\] do not exist; choose among 0\.\."):
        tapped_unet.forward_with_features(*_inputs(TAPPED), (0, 99))

"""Kernel forms: chosen by backend, forced on request, keyed into jit, and equal to the plain maths."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import UNetConfig
from cdiff_jax.nn import kernels
from cdiff_jax.nn.kernels import (
    CPU_FORMS,
    PLAIN_FORMS,
    KernelForms,
    attention,
    forced_kernel_forms,
    kernel_forms,
    multi_head_attention,
    upsample_conv3x3,
)
from cdiff_jax.nn.unet import UNet


def test_the_cpu_backend_gets_the_cpu_forms_and_every_other_the_plain_forms():
    assert kernel_forms("cpu") == CPU_FORMS
    for backend in ("gpu", "tpu", "cuda", "rocm"):
        assert kernel_forms(backend) == PLAIN_FORMS
    assert PLAIN_FORMS.conv == "lax" and PLAIN_FORMS.upsample == "plain" and PLAIN_FORMS.attention == "library"
    assert CPU_FORMS.conv == "by_size" and CPU_FORMS.upsample == "phases" and CPU_FORMS.attention == "heads_first"
    assert kernel_forms() == kernel_forms(jax.default_backend())


def test_forcing_overrides_the_backend_only_inside_the_block():
    forced = KernelForms(conv="winograd", precision="highest")
    with forced_kernel_forms(forced):
        assert kernel_forms("cpu") == kernel_forms("tpu") == forced
    assert kernel_forms("tpu") == PLAIN_FORMS


def test_an_unknown_form_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"conv='im2col'; choose one of"):
        KernelForms(conv="im2col")
    with pytest.raises(ValueError, match="precision='fp32'"):
        KernelForms(precision="fp32")


TINY = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_heads=4,
    context_dim=8,
)


def _forward(graphdef, state, x, t, context):
    return nnx.merge(graphdef, state)(x, t, context)


def test_the_forms_live_in_the_graphdef_so_jit_compiles_each_form_apart():
    """A form chosen from mutable state at trace time would reuse a program compiled for another."""
    inputs = (jnp.ones((1, 8, 8, 4)), jnp.asarray([5]), jnp.ones((1, 3, 8)))

    def build(seed, forms=None):
        return nnx.split(nnx.eval_shape(lambda: UNet(TINY, rngs=nnx.Rngs(seed), forms=forms)))

    cpu, plain, again = build(0, CPU_FORMS), build(0, PLAIN_FORMS), build(1, CPU_FORMS)
    assert cpu[0] == again[0] and hash(cpu[0]) == hash(again[0])  # one compile for equal forms
    assert cpu[0] != plain[0]
    forward = jax.jit(_forward, static_argnums=0)
    programs = [forward.lower(*split, *inputs).as_text() for split in (cpu, plain)]
    assert programs[0] != programs[1]
    with forced_kernel_forms(PLAIN_FORMS):  # forcing at construction gives the plain program on any backend
        forced = build(0)
    assert forced[0] == plain[0]
    assert forward.lower(*forced, *inputs).as_text() == programs[1]


# --- attention ----------------------------------------------------------------------------------


def plain_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh, vh = (x.reshape(b, x.shape[1], heads, d) for x in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) * d**-0.5
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), vh).reshape(b, n, inner)


@pytest.mark.parametrize("form", ["heads_first", "library"])
@pytest.mark.parametrize(
    "tokens,keys,heads,width", [(256, 256, 32, 2), (128, 77, 4, 8), (64, 19, 2, 4), (197, 7, 1, 16)]
)
def test_attention_equals_plain_softmax_attention(form, tokens, keys, heads, width):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, tokens, heads * width)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, keys, heads * width)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, keys, heads * width)), jnp.float32)
    ours = jax.jit(attention, static_argnums=(3, 4))(q, k, v, heads, KernelForms(attention=form))
    np.testing.assert_allclose(ours, plain_attention(q, k, v, heads), rtol=2e-6, atol=2e-6)


def test_attention_gradients_equal_those_of_plain_softmax_attention():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(1, n, 24)), jnp.float32) for n in (48, 30, 30))

    def loss(attention):
        return lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, 3)))

    ours = jax.grad(loss(multi_head_attention), argnums=(0, 1, 2))(q, k, v)
    plain = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_attention_never_materialises_a_score_sized_constant():
    """The scale multiplies q: a scale on the scores becomes a [heads, N, M] constant on XLA:CPU."""
    q = jnp.ones((1, 256, 64), jnp.float32)
    compiled = jax.jit(multi_head_attention, static_argnums=3).lower(q, q, q, 32).compile().as_text()
    assert not re.search(r"f32\[(1,)?32,256,256\]\S* broadcast\([^,)]*\), dimensions=\{\}", compiled)


# --- convolution --------------------------------------------------------------------------------


def lax_conv3x3(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=kernels.NHWC)


def test_the_size_rule_picks_matmul_for_few_positions_and_many_features():
    pad1 = ((1, 1), (1, 1))
    assert kernels.conv_form((1, 8, 8, 256), (3, 3, 256, 8), pad1) == "matmul"  # 64 positions x 2304 features
    assert kernels.conv_form((1, 8, 8, 128), (3, 3, 128, 8), pad1) == "lax"  # too few features
    assert kernels.conv_form((1, 32, 32, 256), (3, 3, 256, 8), pad1) == "lax"  # too many positions


def test_the_size_rule_picks_winograd_only_for_large_even_images_with_many_channels():
    def form(size, cin, cout=256, padding=((1, 1), (1, 1))):
        return kernels.conv_form((1, size, size, cin), (3, 3, cin, cout), padding)

    assert form(64, 256) == "winograd"  # 4096 positions, 256 channels
    assert form(64, 192) == "lax"  # too few input channels
    assert form(64, 256, cout=3) == "lax"  # too few output channels
    assert form(32, 512) == "lax"  # too few positions
    assert form(65, 256) == "lax"  # odd sides
    assert form(64, 256, padding=((0, 1), (0, 1))) == "lax"  # not padding 1


def test_forced_conv_forms_apply_wherever_they_can():
    pad1 = ((1, 1), (1, 1))
    assert kernels.conv_form((1, 4, 4, 3), (3, 3, 3, 2), pad1, "matmul") == "matmul"
    assert kernels.conv_form((1, 4, 4, 3), (3, 3, 3, 2), pad1, "winograd") == "winograd"
    assert kernels.conv_form((1, 5, 4, 3), (3, 3, 3, 2), pad1, "winograd") == "lax"
    assert kernels.conv_form((1, 64, 64, 256), (3, 3, 256, 256), pad1, "lax") == "lax"


@pytest.mark.parametrize("batch,height,width,in_ch,out_ch", [(2, 4, 6, 8, 5), (1, 8, 8, 3, 16), (1, 2, 2, 4, 4)])
def test_winograd_equals_the_convolution(batch, height, width, in_ch, out_ch):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, height, width, in_ch)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, in_ch, out_ch)), jnp.float32)
    np.testing.assert_allclose(
        jax.jit(kernels.winograd_conv3x3)(x, kernel), lax_conv3x3(x, kernel), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "height,width,forms",
    [
        (5, 7, KernelForms(conv="lax")),
        (4, 4, KernelForms(conv="matmul")),
        (4, 4, KernelForms(conv="matmul", upsample="plain")),
        (4, 4, PLAIN_FORMS),
        (3, 4, CPU_FORMS),
    ],
    ids=["phases", "phases-as-matmuls", "upsampled-as-matmul", "plain", "cpu-small"],
)
def test_upsampling_then_convolving_equals_what_upsample_conv3x3_computes(height, width, forms):
    in_ch, out_ch = 8, 6
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, height, width, in_ch)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, in_ch, out_ch)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(out_ch,)), jnp.float32)
    expected = lax_conv3x3(kernels.upsample_nearest(x), kernel) + bias
    ours = jax.jit(upsample_conv3x3, static_argnums=3)
    np.testing.assert_allclose(ours(x, kernel, bias, forms), expected, rtol=1e-5, atol=1e-5)
    program = ours.lower(x, kernel, bias, forms).as_text()
    assert ("convolution" in program) == (forms.conv == "lax" or forms == CPU_FORMS)
    convolutions = program.count("stablehlo.convolution")
    assert convolutions == {"phases": 4, "plain": 1}[forms.upsample] if forms.conv == "lax" else True


def test_precision_reaches_every_product_of_every_form():
    x = jnp.ones((1, 4, 4, 8))
    kernel, bias = jnp.ones((3, 3, 8, 8)), jnp.zeros((8,))
    q = jnp.ones((1, 16, 8))
    for base in (CPU_FORMS, PLAIN_FORMS, KernelForms(conv="winograd"), KernelForms(conv="matmul")):
        forms = dataclasses.replace(base, precision="highest")
        programs = [
            jax.jit(upsample_conv3x3, static_argnums=3).lower(x, kernel, bias, forms).as_text(),
            jax.jit(attention, static_argnums=(3, 4)).lower(q, q, q, 2, forms).as_text(),
        ]
        for program in programs:
            products = [
                line
                for line in program.splitlines()
                if "stablehlo.dot_general" in line or "stablehlo.convolution" in line
            ]
            assert products and all("HIGHEST" in line for line in products), (base, products)


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_probabilities_are_the_head_average_of_the_softmax_attention_applies(heads):
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, n, heads * 4)), jnp.float32) for n in (12, 7, 7))
    probabilities = kernels.attention_probabilities(q, k, heads)
    assert probabilities.shape == (2, 12, 7)
    # each head's probabilities reproduce that head's output; their mean is what is returned
    per_head = [
        kernels.attention_probabilities(q[..., h * 4 : (h + 1) * 4], k[..., h * 4 : (h + 1) * 4], 1)
        for h in range(heads)
    ]
    out = multi_head_attention(q, k, v, heads)
    for h, p in enumerate(per_head):
        np.testing.assert_allclose(p @ v[..., h * 4 : (h + 1) * 4], out[..., h * 4 : (h + 1) * 4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities, sum(per_head) / heads, rtol=1e-6, atol=1e-7)

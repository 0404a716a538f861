"""Shared layers: the fast forms of attention and convolution compute what the plain forms do."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.nn import layers
from cdiff_jax.nn.layers import conv, multi_head_attention, upsample_conv3x3


def plain_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh, vh = (x.reshape(b, x.shape[1], heads, d) for x in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) * d**-0.5
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), vh).reshape(b, n, inner)


@pytest.mark.parametrize("tokens,keys,heads,width", [(256, 256, 32, 2), (128, 77, 4, 8), (64, 19, 2, 4),
                                                     (197, 7, 1, 16)])
def test_attention_equals_plain_softmax_attention(tokens, keys, heads, width):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, tokens, heads * width)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, keys, heads * width)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, keys, heads * width)), jnp.float32)
    ours = jax.jit(multi_head_attention, static_argnums=3)(q, k, v, heads)
    np.testing.assert_allclose(ours, plain_attention(q, k, v, heads), rtol=2e-6, atol=2e-6)


def test_attention_gradients_equal_those_of_plain_softmax_attention():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(1, n, 24)), jnp.float32) for n in (48, 30, 30))
    loss = lambda attention: lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, 3)))
    ours = jax.grad(loss(multi_head_attention), argnums=(0, 1, 2))(q, k, v)
    plain = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_attention_never_materialises_a_score_sized_constant():
    """The scale multiplies q: a scale on the scores becomes a [heads, N, M] constant on XLA:CPU."""
    q = jnp.ones((1, 256, 64), jnp.float32)
    compiled = jax.jit(multi_head_attention, static_argnums=3).lower(q, q, q, 32).compile().as_text()
    assert not re.search(r"f32\[(1,)?32,256,256\]\S* broadcast\([^,)]*\), dimensions=\{\}", compiled)


def lax_convolution(layer, x):
    return jax.lax.conv_general_dilated(x, layer.kernel[...], (1, 1), layer.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + layer.bias[...]


@pytest.mark.parametrize("kernel,padding,size,in_ch,out_ch", [(3, "SAME", 8, 24, 16), (3, 1, 5, 8, 8),
                                                             (1, 0, 4, 40, 24), (3, ((0, 1), (2, 0)), 6, 8, 4)])
def test_a_convolution_computed_as_one_matmul_equals_the_convolution(kernel, padding, size, in_ch, out_ch,
                                                                    monkeypatch):
    monkeypatch.setattr(layers, "MATMUL_CONV_MIN_FEATURES", 1)  # take the matmul path at small sizes
    layer = conv(in_ch, out_ch, kernel, padding=padding, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.linspace(-1, 1, out_ch)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, in_ch)), jnp.float32)
    program = jax.jit(lambda x: layer(x)).lower(x).as_text()
    assert "convolution" not in program
    np.testing.assert_allclose(layer(x), lax_convolution(layer, x), rtol=1e-5, atol=1e-5)


def test_the_matmul_form_is_chosen_only_for_few_positions_and_many_features():
    def lowered(size, in_ch, stride=1):
        layer = conv(in_ch, 8, 3, stride=stride, rngs=nnx.Rngs(0))
        return jax.jit(lambda x: layer(x)).lower(jnp.zeros((1, size, size, in_ch))).as_text()

    assert "convolution" not in lowered(8, 256)  # 64 positions x 2304 features: matmul
    assert "convolution" in lowered(8, 128)  # too few features
    assert "convolution" in lowered(32, 256)  # too many positions
    assert "convolution" in lowered(8, 256, stride=2)  # strided: left to XLA


@pytest.mark.parametrize("batch,height,width,in_ch,out_ch", [(2, 4, 6, 8, 5), (1, 8, 8, 3, 16), (1, 2, 2, 4, 4)])
def test_winograd_equals_the_convolution(batch, height, width, in_ch, out_ch):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, height, width, in_ch)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, in_ch, out_ch)), jnp.float32)
    expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=layers.NHWC)
    np.testing.assert_allclose(jax.jit(layers.winograd_conv3x3)(x, kernel), expected, rtol=1e-5, atol=1e-5)


def test_winograd_is_chosen_only_for_large_even_images_with_many_channels():
    def lowered(size, in_ch, out_ch=256, padding=1):
        layer = conv(in_ch, out_ch, 3, padding=padding, rngs=nnx.Rngs(0))
        return jax.jit(lambda x: layer(x)).lower(jnp.zeros((1, size, size, in_ch))).as_text()

    assert "convolution" not in lowered(64, 256)  # 4096 positions, 256 channels: Winograd
    assert "convolution" in lowered(64, 192)  # too few input channels
    assert "convolution" in lowered(64, 256, out_ch=3)  # too few output channels
    assert "convolution" in lowered(32, 512)  # too few positions
    assert "convolution" in lowered(65, 256)  # odd sides
    assert "convolution" in lowered(64, 256, padding=((0, 1), (0, 1)))  # not padding 1


@pytest.mark.parametrize("height,width,max_positions", [(5, 7, 0), (4, 4, 64), (4, 4, 1 << 20)],
                         ids=["phases", "phases-as-matmuls", "upsampled-as-matmul"])
def test_upsampling_then_convolving_equals_what_upsample_conv3x3_computes(height, width, max_positions,
                                                                        monkeypatch):
    monkeypatch.setattr(layers, "MATMUL_CONV_MIN_FEATURES", 1)
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_POSITIONS", max_positions)
    in_ch, out_ch = 8, 6
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, height, width, in_ch)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, in_ch, out_ch)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(out_ch,)), jnp.float32)
    upsampled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    expected = jax.lax.conv_general_dilated(upsampled, kernel, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    np.testing.assert_allclose(jax.jit(upsample_conv3x3)(x, kernel, bias), expected, rtol=1e-5, atol=1e-5)

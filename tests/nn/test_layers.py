"""Shared layers: a convolution follows its module's kernel forms and computes the convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.nn.kernels import CPU_FORMS, PLAIN_FORMS, KernelForms
from cdiff_jax.nn.layers import conv, linear


def lax_convolution(layer, x):
    return (
        jax.lax.conv_general_dilated(
            x, layer.kernel[...], (1, 1), layer.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + layer.bias[...]
    )


@pytest.mark.parametrize(
    "kernel,padding,size,in_ch,out_ch",
    [(3, "SAME", 8, 24, 16), (3, 1, 5, 8, 8), (1, 0, 4, 40, 24), (3, ((0, 1), (2, 0)), 6, 8, 4)],
)
def test_a_convolution_computed_as_one_matmul_equals_the_convolution(kernel, padding, size, in_ch, out_ch):
    layer = conv(in_ch, out_ch, kernel, padding=padding, forms=KernelForms(conv="matmul"), rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.linspace(-1, 1, out_ch)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, in_ch)), jnp.float32)
    program = jax.jit(lambda x: layer(x)).lower(x).as_text()
    assert "convolution" not in program
    np.testing.assert_allclose(layer(x), lax_convolution(layer, x), rtol=1e-5, atol=1e-5)


def test_a_layer_takes_its_form_from_the_rule_on_cpu_and_is_xlas_convolution_elsewhere():
    def lowered(size, in_ch, stride=1, forms=CPU_FORMS):
        layer = conv(in_ch, 8, 3, stride=stride, forms=forms, rngs=nnx.Rngs(0))
        return jax.jit(lambda x: layer(x)).lower(jnp.zeros((1, size, size, in_ch))).as_text()

    assert "convolution" not in lowered(8, 256)  # 64 positions x 2304 features: matmul
    assert "convolution" in lowered(8, 128)  # too few features
    assert "convolution" in lowered(32, 256)  # too many positions
    assert "convolution" in lowered(8, 256, stride=2)  # strided: left to XLA
    assert "convolution" in lowered(8, 256, forms=PLAIN_FORMS)
    assert conv(4, 4, 3, forms=PLAIN_FORMS, rngs=nnx.Rngs(0)).conv_general_dilated is jax.lax.conv_general_dilated


def test_layers_carry_the_forms_precision():
    forms = KernelForms(precision="highest")
    assert conv(4, 4, 3, forms=forms, rngs=nnx.Rngs(0)).precision == "highest"
    assert linear(4, 4, forms=forms, rngs=nnx.Rngs(0)).precision == "highest"
    assert linear(4, 4, forms=CPU_FORMS, rngs=nnx.Rngs(0)).precision is None

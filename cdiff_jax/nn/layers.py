"""Small building blocks shared by the UNet, the autoencoder and the text encoder.

Convolutions and linear maps take the module's `KernelForms` (cdiff_jax.nn.kernels): how a
convolution is computed and the precision of every product. All image tensors are NHWC.
Epsilons are arguments because the reference uses three of them (GroupNorm 1e-5 in UNet res
blocks, 1e-6 in transformers and the autoencoder, LayerNorm 1e-5) and parity depends on
getting each one right.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.nn.kernels import KernelForms, conv_function

zeros = nnx.initializers.zeros
TRUNCATED_STD = 0.87962566103423978  # the standard deviation of a standard normal truncated to (-2, 2)


def fan_in_truncated_normal(scale: float = 1.0):
    """`jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")` (scale 1: flax's default kernel
    initialiser, LeCun normal; 2: He normal), its draw made as one flat vector and reshaped: the same bits, so the
    same values, and XLA:CPU compiles the draw a module built eagerly makes per kernel shape in about half the
    time (`cdiff_jax.noise`)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:-1])  # every axis but the output's: the input channels and the receptive field
        stddev = jnp.sqrt(jnp.array(scale / fan_in, dtype)) / jnp.array(TRUNCATED_STD, dtype)
        return jax.random.truncated_normal(key, -2, 2, (math.prod(shape),), dtype).reshape(shape) * stddev

    return init


lecun_normal = fan_in_truncated_normal(1.0)


def group_norm(channels: int, eps: float, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm with 32 groups and a two-pass variance, as torch computes it."""
    return nnx.GroupNorm(channels, num_groups=32, epsilon=eps, use_fast_variance=False, rngs=rngs)


def layer_norm(features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


def conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int | str | tuple = "SAME",
    zero_init: bool = False,
    forms: KernelForms,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D convolution; `zero_init` makes a residual branch start as the identity."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=padding,
        conv_general_dilated=conv_function(forms),
        precision=forms.precision,
        kernel_init=zeros if zero_init else lecun_normal,
        rngs=rngs,
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    zero_init: bool = False,
    forms: KernelForms,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A dense layer whose product runs at the forms' precision; `zero_init` starts it at output 0 (plus bias)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        precision=forms.precision,
        kernel_init=zeros if zero_init else lecun_normal,
        rngs=rngs,
    )

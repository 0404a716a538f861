"""Small building blocks shared by the UNet, the autoencoder and the text encoder.

All image tensors are NHWC. Epsilons are arguments because the reference uses three of
them (GroupNorm 1e-5 in UNet res blocks, 1e-6 in transformers and the autoencoder,
LayerNorm 1e-5) and parity depends on getting each one right.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

zeros = nnx.initializers.zeros


def group_norm(channels: int, eps: float, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm with 32 groups and a two-pass variance, as torch computes it."""
    return nnx.GroupNorm(channels, num_groups=32, epsilon=eps, use_fast_variance=False, rngs=rngs)


def layer_norm(features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


# XLA:CPU's convolution runs at under half its matmul speed where a layer has few output
# positions and many input features (the experts' 8x8 and 16x16 levels at 512: bench/conv.py).
# There the convolution is computed as one matmul over the kernel's shifted copies of the input.
MATMUL_CONV_MAX_POSITIONS = 512
MATMUL_CONV_MIN_FEATURES = 2048
NHWC = ("NHWC", "HWIO", "NHWC")  # dimension numbers: image, kernel, output


def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated` for nnx.Conv, as a matmul (im2col) where that is faster.

    Only NHWC, stride 1, undilated, ungrouped 2-D convolutions qualify; each output is the same
    sum of products, accumulated in a different order. `dimension_numbers` may be given in any
    form lax accepts.
    """
    simple = (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and feature_group_count == 1
              and kwargs.get("out_sharding") is None
              and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
              and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
              == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
    if not (simple and math.prod(lhs.shape[:3]) <= MATMUL_CONV_MAX_POSITIONS
            and math.prod(rhs.shape[:3]) >= MATMUL_CONV_MIN_FEATURES):
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision, **kwargs)
    kh, kw, cin, cout = rhs.shape
    b, h, w, _ = lhs.shape
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads((h, w), (kh, kw), (1, 1), padding)
    (top, bottom), (left, right) = padding
    padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh, ow = h + top + bottom - kh + 1, w + left + right - kw + 1
    patches = jnp.concatenate(
        [padded[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)
    out = jnp.dot(patches.reshape(b * oh * ow, kh * kw * cin), rhs.reshape(kh * kw * cin, cout),
                  precision=precision, preferred_element_type=kwargs.get("preferred_element_type"))
    return out.reshape(b, oh, ow, cout)


def upsample_nearest(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def upsample_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling, then a 3x3 convolution with padding 1, without building
    the upsampled image.

    Along each axis, an even output reads input offsets (-1, 0) with kernel taps (k0, k1 + k2)
    and an odd output reads (0, +1) with (k0 + k1, k2), because the taps it sums read the same
    input pixel. So each of the four output phases is a 2x2 convolution of the input: 4/9 of the
    products, and half the time at the autoencoder's 512x512 level (bench/upsample.py). Where the
    upsampled image is small enough for the matmul form of `conv_general_dilated`, that is faster
    still and is used instead.
    """
    b, h, w, _ = x.shape
    if b * 4 * h * w <= MATMUL_CONV_MAX_POSITIONS:
        return conv_general_dilated(upsample_nearest(x), kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC) + bias

    def fold(k, axis, odd):
        k0, k1, k2 = jnp.split(k, 3, axis=axis)
        return jnp.concatenate([k0 + k1, k2] if odd else [k0, k1 + k2], axis=axis)

    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for row in (0, 1):
        phases = [conv_general_dilated(padded[:, row:row + h + 1, col:col + w + 1],
                                       fold(fold(kernel, 0, row), 1, col), (1, 1), "VALID", dimension_numbers=NHWC)
                  for col in (0, 1)]
        rows.append(jnp.stack(phases, axis=3))
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, -1) + bias


def conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int | str | tuple = "SAME",
    zero_init: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D convolution; `zero_init` makes a residual branch start as the identity."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    extra = {"kernel_init": zeros} if zero_init else {}
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=padding,
                    conv_general_dilated=conv_general_dilated, rngs=rngs, **extra)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int) -> jax.Array:
    """Softmax attention over [B, N, heads*D] projections; channels split as (heads, D).

    The score scale is D**-0.5 and softmax runs over keys, as in the reference. Heads go first
    and keys are transposed once to [D, M], so both products are plain batched matmuls: on
    XLA:CPU this is 3-7x faster than `jax.nn.dot_product_attention` for the UNets' narrow heads
    over 1024 tokens (bench/attention.py). Processing queries in blocks gains nothing more and
    slows the sampling loop (a loop nested in the scan), so the score tensor is built whole, as
    the reference builds it.
    """
    b, n, inner = q.shape
    d = inner // heads
    q = q.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    keys_t = k.reshape(b, k.shape[1], heads, d).transpose(0, 2, 3, 1)
    v = v.reshape(b, v.shape[1], heads, d).transpose(0, 2, 1, 3)
    out = jax.nn.softmax((q @ keys_t) * d**-0.5, axis=-1) @ v
    return out.transpose(0, 2, 1, 3).reshape(b, n, inner)

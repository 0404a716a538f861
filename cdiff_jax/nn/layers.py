"""Small building blocks shared by the UNet, the autoencoder and the text encoder.

All image tensors are NHWC. Epsilons are arguments because the reference uses three of
them (GroupNorm 1e-5 in UNet res blocks, 1e-6 in transformers and the autoencoder,
LayerNorm 1e-5) and parity depends on getting each one right.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

zeros = nnx.initializers.zeros


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
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D convolution; `zero_init` makes a residual branch start as the identity."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    extra = {"kernel_init": zeros} if zero_init else {}
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=padding, rngs=rngs, **extra)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int) -> jax.Array:
    """Softmax attention over [B, N, heads*D] projections; channels split as (heads, D).

    The score scale is D**-0.5 and softmax runs in float32 over keys, as in the reference.
    """
    b, n, inner = q.shape
    d = inner // heads
    q = q.reshape(b, n, heads, d)
    k = k.reshape(b, k.shape[1], heads, d)
    v = v.reshape(b, v.shape[1], heads, d)
    out = jax.nn.dot_product_attention(q, k, v, scale=d**-0.5, implementation="xla")
    return out.reshape(b, n, inner)

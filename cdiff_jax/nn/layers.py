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


QUERY_BLOCK = 64
# Blocking pays only where attention is memory-bound: narrow heads and a score tensor far larger
# than the caches (bench/attention.py: 3.4x at 32 heads x 1024 tokens x width 2, but 0.7x at 256
# tokens and 0.6x for the autoencoder's single 512-wide head over 4096 tokens).
BLOCKED_MAX_HEAD_WIDTH = 32
BLOCKED_MIN_SCORES = 1 << 22


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int) -> jax.Array:
    """Softmax attention over [B, N, heads*D] projections; channels split as (heads, D).

    The score scale is D**-0.5 and softmax runs over keys, as in the reference. Where heads are
    narrow and the [heads, N, M] score tensor is large (the dynamic diffusers' 32 heads of width
    2 over 1024 tokens), queries are processed in blocks of QUERY_BLOCK rows so that XLA:CPU
    never materialises the whole tensor. Each row's arithmetic is unchanged.
    """
    b, n, inner = q.shape
    d = inner // heads
    k = k.reshape(b, k.shape[1], heads, d)
    v = v.reshape(b, v.shape[1], heads, d)

    def attend(queries):
        return jax.nn.dot_product_attention(queries, k, v, scale=d**-0.5, implementation="xla")

    q = q.reshape(b, n, heads, d)
    blocked = d <= BLOCKED_MAX_HEAD_WIDTH and heads * n * k.shape[1] >= BLOCKED_MIN_SCORES
    if not blocked or n <= QUERY_BLOCK or n % QUERY_BLOCK:
        return attend(q).reshape(b, n, inner)
    blocks = jnp.moveaxis(q.reshape(b, n // QUERY_BLOCK, QUERY_BLOCK, heads, d), 1, 0)
    out = jax.lax.map(attend, blocks)
    return jnp.moveaxis(out, 0, 1).reshape(b, n, inner)

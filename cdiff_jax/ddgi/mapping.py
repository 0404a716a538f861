"""M: the UNet's middle-block features h_t -> the W+ code w^m_t, one pSp map2style head per entry.

Each head halves the map with stride-2 3x3 convolutions (log2(size) of them, ReLU after each) down
to 1x1 and ends in a linear layer to w_dim. The heads share no weights, as in pSp, so they are
built as one stacked module (`nnx.vmap`) and run in one vectorised call. The output is an offset
from the GAN's average code: with the last layer zero-initialised, M starts at w_avg, where the
generator draws its most typical face.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.config import DDGIHeadsConfig
from cdiff_jax.nn.kernels import kernel_forms
from cdiff_jax.nn.layers import conv, linear


class StyleHead(nnx.Module):
    """map2style: [B, s, s, C] -> [B, w_dim]."""

    def __init__(self, size: int, in_channels: int, channels: int, w_dim: int, *, rngs: nnx.Rngs):
        forms = kernel_forms()
        widths = [in_channels] + [channels] * int(math.log2(size))
        self.convs = nnx.List(
            [conv(a, b, 3, stride=2, padding=1, forms=forms, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.out = linear(widths[-1], w_dim, zero_init=True, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.convs:
            x = jax.nn.relu(layer(x))
        return self.out(x.reshape(x.shape[0], -1))


class MappingNetwork(nnx.Module):
    """w^m_t = w_avg + [head_k(h_t)]_k, [B, num_ws, w_dim]."""

    def __init__(self, cfg: DDGIHeadsConfig, *, rngs: nnx.Rngs):
        size, channels = cfg.middle

        @nnx.split_rngs(splits=cfg.num_ws)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def heads(rngs: nnx.Rngs) -> StyleHead:
            return StyleHead(size, channels, cfg.mapping_channels, cfg.w_dim, rngs=rngs)

        self.heads = heads(rngs)

    def __call__(self, h: jax.Array, w_avg: jax.Array) -> jax.Array:
        # jax.vmap over the split heads, not nnx.vmap: a pure function of the state also works when the
        # module was merged under another transform (the trainer merges inside jit and grad).
        graphdef, state = nnx.split(self.heads)
        offsets = jax.vmap(lambda s: nnx.merge(graphdef, s)(h), out_axes=1)(state)
        return jnp.asarray(w_avg, offsets.dtype) + offsets

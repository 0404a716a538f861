"""T (AbSMNet): decoder features f_t gated by cross-attention a_t -> per-entry scales and shifts of W+.

Our reading of the paper's figure, per tapped layer l:
  A_l  = max over content tokens of the head-averaged attention probabilities (each pixel's
         strongest word; start, end and padding tokens are masked out, since in transformers they
         take most of the attention mass without saying where anything is),
  A-bar_l = spatial mean of A_l,  F-bar_l = spatial mean of f_l,
and F_l, A_l resized to the largest tapped level while F-bar_l, A-bar_l are broadcast. The local
stream F * A and the global stream F-bar * A-bar of all layers are concatenated on channels; stride-2
convolutions bring them to 1x1, and two zero-initialised linear heads give gamma = 1 + delta and beta,
so that at the start w = w^m * gamma + beta = w^m.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.config import DDGIHeadsConfig
from cdiff_jax.nn.kernels import kernel_forms
from cdiff_jax.nn.layers import conv, linear


def content_attention(probabilities: jax.Array, content: jax.Array) -> jax.Array:
    """A: [B, s*s, tokens] probabilities and a [B, tokens] content mask -> [B, s, s, 1].

    A batch row without content tokens (an empty caption) attends nowhere: its A is zero.
    """
    masked = jnp.where(content[:, None, :], probabilities, -jnp.inf)
    strongest = jnp.where(content.any(axis=-1)[:, None], masked.max(axis=-1), 0.0)
    size = math.isqrt(probabilities.shape[1])
    return strongest.reshape(-1, size, size, 1)


def _resize(x: jax.Array, size: int) -> jax.Array:
    if x.shape[1] == size:
        return x
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), method="bilinear")


class AbSMNet(nnx.Module):
    def __init__(self, cfg: DDGIHeadsConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        forms = kernel_forms()
        channels = 2 * sum(c for _, c in cfg.levels)
        widths = [channels] + [cfg.modulation_channels] * int(math.log2(cfg.modulation_size))
        self.convs = nnx.List(
            [conv(a, b, 3, stride=2, padding=1, forms=forms, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        # Zero-initialised: gamma 1 and beta 0, so that w = w^m at the start.
        self.gamma = linear(widths[-1], cfg.num_ws * cfg.w_dim, zero_init=True, forms=forms, rngs=rngs)
        self.beta = linear(widths[-1], cfg.num_ws * cfg.w_dim, zero_init=True, forms=forms, rngs=rngs)

    def streams(self, features, attention, content) -> jax.Array:
        """The local and global streams of every layer, [B, S, S, 2 * sum(C_l)] at the largest level S."""
        size = self.cfg.modulation_size
        local, global_ = [], []
        for f, a in zip(features, attention, strict=True):
            # The attention map has its transformer's resolution, which is f's or half of it (a block
            # that ends its level upsamples after attending).
            if self.cfg.attention_gating:
                gate = content_attention(a, content)
            else:
                gate = jnp.ones(f.shape[:3] + (1,), f.dtype)
            local.append(_resize(f, size) * _resize(gate, size))
            mean = f.mean(axis=(1, 2), keepdims=True) * gate.mean(axis=(1, 2), keepdims=True)
            global_.append(jnp.broadcast_to(mean, (f.shape[0], size, size, f.shape[-1])))
        return jnp.concatenate(local + global_, axis=-1)

    def __call__(self, features, attention, content) -> tuple[jax.Array, jax.Array]:
        """gamma and beta, each [B, num_ws, w_dim], from the tapped layers' f [B, s, s, C] and a [B, s*s, tokens]."""
        x = self.streams(features, attention, content)
        for layer in self.convs:
            x = jax.nn.relu(layer(x))
        x = x.reshape(x.shape[0], -1)
        shape = (x.shape[0], self.cfg.num_ws, self.cfg.w_dim)
        return 1.0 + self.gamma(x).reshape(shape), self.beta(x).reshape(shape)

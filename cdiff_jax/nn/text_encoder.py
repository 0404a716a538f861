"""The text condition encoder: a BERT-sized pre-LN transformer trained from scratch.

It matches the x-transformers `Encoder` the reference uses: learned absolute positions,
8 heads of width 64 whatever the model width, q/k/v without bias, a plain exact-GELU MLP,
a final LayerNorm, and no padding mask (pad tokens attend and are attended to).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.config import TextEncoderConfig
from cdiff_jax.nn.kernels import KernelForms, kernel_forms
from cdiff_jax.nn.layers import layer_norm, linear
from cdiff_jax.nn.remat import checkpointed
from cdiff_jax.nn.unet import Attention


class FeedForward(nnx.Module):
    def __init__(self, dim: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.fc1 = linear(dim, 4 * dim, forms=forms, rngs=rngs)
        self.fc2 = linear(4 * dim, dim, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: TextEncoderConfig, *, forms: KernelForms, rngs: nnx.Rngs):
        self.attn_norm = layer_norm(cfg.width, rngs=rngs)
        self.attn = Attention(cfg.width, cfg.width, cfg.heads, cfg.head_dim, forms=forms, rngs=rngs)
        self.ff_norm = layer_norm(cfg.width, rngs=rngs)
        self.ff = FeedForward(cfg.width, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns x after the attention residual and after the feed-forward residual."""
        after_attn = x + self.attn(self.attn_norm(x))
        return after_attn, after_attn + self.ff(self.ff_norm(after_attn))


class TextEncoder(nnx.Module):
    """Token ids [B, max_len] -> context [B, max_len, width]; `forms` and `remat` (per layer) as for the UNet."""

    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs, forms: KernelForms | None = None):
        self.cfg = cfg
        self.remat = "none"
        forms = forms or kernel_forms()
        self.token_emb = nnx.Embed(cfg.vocab_size, cfg.width, rngs=rngs)
        self.pos_emb = nnx.Embed(cfg.max_len, cfg.width, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, forms=forms, rngs=rngs) for _ in range(cfg.depth)])
        self.final_norm = layer_norm(cfg.width, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.forward_with_intermediates(ids)[0]

    def forward_with_intermediates(self, ids: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = self.token_emb(ids) + self.pos_emb(jnp.arange(ids.shape[1]))[None]
        inter = {"token_plus_pos_emb": x}
        run = checkpointed(EncoderLayer.__call__, self.remat)
        for i, layer in enumerate(self.layers):
            after_attn, x = run(layer, x)
            inter[f"layer{2 * i:02d}_attn_residual_out"] = after_attn
            inter[f"layer{2 * i + 1:02d}_ff_residual_out"] = x
        inter["pre_final_norm"] = x
        return self.final_norm(x), inter

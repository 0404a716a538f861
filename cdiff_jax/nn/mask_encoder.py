"""The mask condition encoder: one token per class, its flattened binary map, projected.

The one-hot mask [B, classes, size*size] comes from `cdiff_jax.data.masks`; a single Linear
maps each class's 1024-pixel map to the context width. There is no class or position
embedding: a class is identified only by which pixels it covers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.config import MaskEncoderConfig


class MaskEncoder(nnx.Module):
    def __init__(self, cfg: MaskEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.linear = nnx.Linear(cfg.mask_size * cfg.mask_size, cfg.context_dim, rngs=rngs)

    def __call__(self, one_hot: jax.Array) -> jax.Array:
        return self.linear(one_hot.astype(jnp.float32))

"""The scribble condition encoder: one token per stroke width, its flattened map, projected.

The tokens [B, widths, size*size] come from `cdiff_jax.data.scribbles`; as in the mask encoder, a
single Linear maps each flattened map to the context width, with no position or width embedding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.config import ScribbleEncoderConfig


class ScribbleEncoder(nnx.Module):
    def __init__(self, cfg: ScribbleEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.linear = nnx.Linear(cfg.scribble_size * cfg.scribble_size, cfg.context_dim, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.linear(tokens.astype(jnp.float32))

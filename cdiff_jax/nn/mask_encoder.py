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
from cdiff_jax.nn.kernels import KernelForms, kernel_forms
from cdiff_jax.nn.layers import linear


class MaskEncoder(nnx.Module):
    def __init__(self, cfg: MaskEncoderConfig, *, rngs: nnx.Rngs, forms: KernelForms | None = None):
        self.cfg = cfg
        self.linear = linear(cfg.mask_size * cfg.mask_size, cfg.context_dim, forms=forms or kernel_forms(), rngs=rngs)

    def __call__(self, one_hot: jax.Array) -> jax.Array:
        return self.linear(one_hot.astype(jnp.float32))

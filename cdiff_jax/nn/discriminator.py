"""The autoencoder stage's PatchGAN discriminator (LDM's `NLayerDiscriminator`, 3 layers, 64 filters).

It scores overlapping patches as real or reconstructed. The reference normalises with
BatchNorm; the discriminator only ever runs in training, where BatchNorm uses the statistics
of the current batch, so this one does exactly that and keeps no running averages (under data
parallelism the statistics are those of the global batch).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

BATCH_NORM_EPS = 1e-5
LEAK = 0.2


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    in_channels: int = 3
    filters: int = 64
    layers: int = 3


class BatchStatNorm(nnx.Module):
    """Per-channel normalisation by the batch's mean and biased variance, then scale and shift."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.scale = nnx.Param(1.0 + 0.02 * jax.random.normal(rngs.params(), (channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(axis=(0, 1, 2))
        var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPS) * self.scale + self.bias


def _patch_conv(in_ch: int, out_ch: int, stride: int, *, bias: bool, rngs: nnx.Rngs) -> nnx.Conv:
    """4x4 convolution with padding 1, N(0, 0.02) weights as the reference initialises them."""
    return nnx.Conv(
        in_ch,
        out_ch,
        (4, 4),
        strides=stride,
        padding=((1, 1), (1, 1)),
        use_bias=bias,
        kernel_init=nnx.initializers.normal(0.02),
        rngs=rngs,
    )


class PatchDiscriminator(nnx.Module):
    """image [B, H, W, C] in [-1, 1] -> patch logits [B, H/8 - 2, W/8 - 2, 1] (for 3 layers)."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.stem = _patch_conv(cfg.in_channels, cfg.filters, 2, bias=True, rngs=rngs)
        convs, norms, width = [], [], cfg.filters
        for n in range(1, cfg.layers + 1):
            out = cfg.filters * min(2**n, 8)
            convs.append(_patch_conv(width, out, 2 if n < cfg.layers else 1, bias=False, rngs=rngs))
            norms.append(BatchStatNorm(out, rngs=rngs))
            width = out
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.head = _patch_conv(width, 1, 1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.leaky_relu(self.stem(x), LEAK)
        for layer, norm in zip(self.convs, self.norms):
            h = jax.nn.leaky_relu(norm(layer(h)), LEAK)
        return self.head(h)

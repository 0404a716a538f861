"""StyleGAN2 discriminator ('resnet' architecture), NHWC, numerically stylegan2-ada-pytorch's
`training.networks.Discriminator`: the adversary of the toy GAN.

  image -> fromRGB at full resolution -> per resolution a residual block (conv0, conv1 with x2 FIR
  downsampling, 1x1 downsampled skip, summed with gain sqrt(1/2)) -> at 4x4 the epilogue:
  minibatch standard deviation, conv, FC, output FC (projected on the embedded label if conditional).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.config import StyleGAN2Config, StyleGAN2DiscriminatorConfig
from cdiff_jax.nn.kernels import NHWC
from cdiff_jax.nn.stylegan2 import EqualizedLinear, MappingNetwork, lrelu, upfirdn
from cdiff_jax.noise import normal

MBSTD_EPS = 1e-8


class EqualizedConv2d(nnx.Module):
    """Conv with equalised learning rate (weight / sqrt(fan_in)), optional x2 FIR downsampling, bias,
    activation (lrelu with gain sqrt(2), or linear) and clamp, all scaled by a per-call `gain`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        activation: str = "lrelu",
        bias: bool = True,
        down: bool = False,
        resample_filter: Sequence[int] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        rngs: nnx.Rngs,
    ):
        self.weight = nnx.Param(normal(rngs.params(), (kernel, kernel, in_channels, out_channels)))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.activation = activation
        self.down_taps = tuple(resample_filter) if down else None
        self.conv_clamp = conv_clamp

    def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
        w = self.weight[...] * self.weight_gain
        k = w.shape[0]
        if self.down_taps is None:
            x = jax.lax.conv_general_dilated(x, w, (1, 1), ((k // 2, k // 2),) * 2, dimension_numbers=NHWC)
        else:  # FIR-filter, then a stride-2 conv (1x1 kernels: subsample, then conv), as conv2d_resample
            n = len(self.down_taps)
            x = upfirdn(x, self.down_taps, (k // 2 + (n - 1) // 2, k // 2 + (n - 2) // 2), gain=1.0)
            if k == 1:
                x = x[:, ::2, ::2]
            x = jax.lax.conv_general_dilated(
                x, w, (1, 1) if k == 1 else (2, 2), ((0, 0), (0, 0)), dimension_numbers=NHWC
            )
        if self.bias is not None:
            x = x + self.bias[...]
        if self.activation == "lrelu":
            x = jnp.where(x >= 0, x, 0.2 * x) * (math.sqrt(2.0) * gain)
        else:
            x = x * gain
        return x if self.conv_clamp is None else jnp.clip(x, -self.conv_clamp * gain, self.conv_clamp * gain)


class DiscriminatorBlock(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        cfg: StyleGAN2DiscriminatorConfig,
        *,
        rngs: nnx.Rngs,
    ):
        conv = dict(resample_filter=cfg.resample_filter, conv_clamp=cfg.conv_clamp, rngs=rngs)
        self.fromrgb = EqualizedConv2d(cfg.img_channels, tmp_channels, 1, **conv) if in_channels == 0 else None
        self.conv0 = EqualizedConv2d(tmp_channels, tmp_channels, 3, **conv)
        self.conv1 = EqualizedConv2d(tmp_channels, out_channels, 3, down=True, **conv)
        self.skip = EqualizedConv2d(tmp_channels, out_channels, 1, activation="linear", bias=False, down=True, **conv)

    def __call__(self, x: jax.Array | None, img: jax.Array) -> jax.Array:
        if self.fromrgb is not None:
            y = self.fromrgb(img)
            x = y if x is None else x + y
        y = self.skip(x, gain=math.sqrt(0.5))
        return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


def minibatch_stddev(x: jax.Array, group_size: int, num_channels: int) -> jax.Array:
    """Append the within-group standard deviation (mean over channels and pixels, per channel group)
    as `num_channels` feature maps. Sample i is in group i mod (N / G), as in the official reshape;
    the batch must be a multiple of the group size min(group_size, N)."""
    n, h, w, c = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch stddev: batch {n} is not a multiple of the group size {g}")
    y = x.reshape(g, n // g, h, w, num_channels, c // num_channels)
    y = jnp.sqrt(jnp.mean(jnp.square(y - y.mean(axis=0)), axis=0) + MBSTD_EPS)  # [n/G, H, W, F, c/F]
    y = jnp.tile(y.mean(axis=(1, 2, 4)), (g, 1))  # [N, F]
    return jnp.concatenate([x, jnp.broadcast_to(y[:, None, None, :], (n, h, w, num_channels))], axis=-1)


class DiscriminatorEpilogue(nnx.Module):
    def __init__(self, channels: int, cfg: StyleGAN2DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.group_size, self.num_channels = cfg.mbstd_group_size, cfg.mbstd_num_channels
        self.conv = EqualizedConv2d(
            channels + cfg.mbstd_num_channels, channels, 3, conv_clamp=cfg.conv_clamp, rngs=rngs
        )
        self.fc = EqualizedLinear(channels * 4 * 4, channels, rngs=rngs)
        self.out = EqualizedLinear(channels, cfg.projection_dim or 1, rngs=rngs)

    def __call__(self, x: jax.Array, cmap: jax.Array | None) -> jax.Array:
        if self.num_channels:
            x = minibatch_stddev(x, self.group_size, self.num_channels)
        x = self.conv(x)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # flattened in the official (C, H, W) order
        x = self.out(lrelu(self.fc(x)))
        if cmap is not None:
            x = jnp.sum(x * cmap, axis=1, keepdims=True) / math.sqrt(cmap.shape[-1])
        return x


class Discriminator(nnx.Module):
    """images [B, R, R, C] (+ labels [B, c_dim]) -> logits [B, 1]."""

    def __init__(self, cfg: StyleGAN2DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        blocks = []
        for res in cfg.block_resolutions:
            in_channels = 0 if res == cfg.img_resolution else cfg.channels(res)
            blocks.append(DiscriminatorBlock(in_channels, cfg.channels(res), cfg.channels(res // 2), cfg, rngs=rngs))
        self.blocks = nnx.List(blocks)
        label_mapping = StyleGAN2Config(
            z_dim=0,
            c_dim=cfg.c_dim,
            w_dim=cfg.projection_dim or 1,
            mapping_layers=cfg.mapping_layers,
            mapping_lr_multiplier=cfg.mapping_lr_multiplier,
        )
        self.mapping = MappingNetwork(label_mapping, rngs=rngs, with_w_avg=False) if cfg.c_dim else None
        self.epilogue = DiscriminatorEpilogue(cfg.channels(4), cfg, rngs=rngs)

    def __call__(self, img: jax.Array, c: jax.Array | None = None) -> jax.Array:
        if self.mapping is not None and (c is None or c.shape != (img.shape[0], self.cfg.c_dim)):
            raise ValueError(
                f"c: this discriminator is conditional; pass labels of shape [{img.shape[0]}, {self.cfg.c_dim}]"
            )
        x = None
        for block in self.blocks:
            x = block(x, img)
        cmap = None if self.mapping is None else self.mapping(jnp.zeros((img.shape[0], 0), img.dtype), c)
        return self.epilogue(x, cmap)

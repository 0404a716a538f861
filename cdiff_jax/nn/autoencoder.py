"""The KL autoencoder (first stage): image <-> diagonal-Gaussian latent.

Differences from the UNet that matter for parity: every GroupNorm has eps 1e-6, there is no
time embedding, downsampling pads only right and bottom (0, 1, 0, 1) before a stride-2
conv, and attention is a single head over 1x1-conv projections in the middle only.
Decoder `up[0]` is the highest resolution level, as in the reference's key names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.config import AutoencoderConfig
from cdiff_jax.nn.kernels import KernelForms, attention, kernel_forms
from cdiff_jax.nn.layers import conv, group_norm
from cdiff_jax.nn.remat import checkpointed
from cdiff_jax.nn.unet import Upsample

LOGVAR_RANGE = (-30.0, 20.0)


class VaeResBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.norm1 = group_norm(in_ch, 1e-6, rngs=rngs)
        self.conv1 = conv(in_ch, out_ch, 3, padding=1, forms=forms, rngs=rngs)
        self.norm2 = group_norm(out_ch, 1e-6, rngs=rngs)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, forms=forms, rngs=rngs)
        self.nin_shortcut = conv(in_ch, out_ch, 1, forms=forms, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class VaeAttention(nnx.Module):
    """Single-head self-attention over all positions, scale C**-0.5."""

    def __init__(self, ch: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.forms = forms
        self.norm = group_norm(ch, 1e-6, rngs=rngs)
        self.q = conv(ch, ch, 1, forms=forms, rngs=rngs)
        self.k = conv(ch, ch, 1, forms=forms, rngs=rngs)
        self.v = conv(ch, ch, 1, forms=forms, rngs=rngs)
        self.proj_out = conv(ch, ch, 1, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        n = self.norm(x)
        q, k, v = (f(n).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
        out = attention(q, k, v, 1, self.forms)
        return x + self.proj_out(out.reshape(b, h, w, c))


class VaeDownsample(nnx.Module):
    def __init__(self, ch: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.conv = conv(ch, ch, 3, stride=2, padding=((0, 1), (0, 1)), forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class VaeLevel(nnx.Module):
    """One resolution level: res blocks (with attention where configured) and a resampler."""

    def __init__(self, blocks: list[VaeResBlock], attn: list[VaeAttention], resample: nnx.Module | None):
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attn)
        self.resample = resample
        self.remat = "none"  # activation checkpointing of each block (cdiff_jax.nn.remat)

    def blocks(self, x: jax.Array) -> jax.Array:
        res, attend = checkpointed(VaeResBlock.__call__, self.remat), checkpointed(VaeAttention.__call__, self.remat)
        for i, block in enumerate(self.block):
            x = res(block, x)
            if self.attn:
                x = attend(self.attn[i], x)
        return x


class VaeMiddle(nnx.Module):
    def __init__(self, ch: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.block_1 = VaeResBlock(ch, ch, forms=forms, rngs=rngs)
        self.attn_1 = VaeAttention(ch, forms=forms, rngs=rngs)
        self.block_2 = VaeResBlock(ch, ch, forms=forms, rngs=rngs)
        self.remat = "none"  # as VaeLevel's

    def __call__(self, x: jax.Array) -> jax.Array:
        res = checkpointed(VaeResBlock.__call__, self.remat)
        return res(self.block_2, checkpointed(VaeAttention.__call__, self.remat)(self.attn_1, res(self.block_1, x)))


class Encoder(nnx.Module):
    def __init__(self, cfg: AutoencoderConfig, *, forms: KernelForms, rngs: nnx.Rngs):
        self.conv_in = conv(cfg.in_channels, cfg.ch, 3, padding=1, forms=forms, rngs=rngs)
        levels, res, in_ch = [], cfg.resolution, cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            out_ch = cfg.ch * mult
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(VaeResBlock(in_ch, out_ch, forms=forms, rngs=rngs))
                in_ch = out_ch
                if res in cfg.attn_resolutions:
                    attn.append(VaeAttention(in_ch, forms=forms, rngs=rngs))
            last = i == len(cfg.ch_mult) - 1
            levels.append(VaeLevel(blocks, attn, None if last else VaeDownsample(in_ch, forms=forms, rngs=rngs)))
            if not last:
                res //= 2
        self.down = nnx.List(levels)
        self.mid = VaeMiddle(in_ch, forms=forms, rngs=rngs)
        self.norm_out = group_norm(in_ch, 1e-6, rngs=rngs)
        self.conv_out = conv(in_ch, 2 * cfg.z_channels, 3, padding=1, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward_with_intermediates(x)[0]

    def forward_with_intermediates(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        h = self.conv_in(x)
        inter = {"conv_in": h}
        for i, level in enumerate(self.down):
            h = inter[f"down{i}_block_last"] = level.blocks(h)
            if level.resample is not None:
                h = inter[f"down{i}_downsample"] = level.resample(h)
        h = inter["mid_out"] = self.mid(h)
        out = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return out, inter


class Decoder(nnx.Module):
    def __init__(self, cfg: AutoencoderConfig, *, forms: KernelForms, rngs: nnx.Rngs):
        ch = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample_factor
        self.conv_in = conv(cfg.z_channels, ch, 3, padding=1, forms=forms, rngs=rngs)
        self.mid = VaeMiddle(ch, forms=forms, rngs=rngs)
        levels = []
        for i in reversed(range(len(cfg.ch_mult))):
            out_ch = cfg.ch * cfg.ch_mult[i]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(VaeResBlock(ch, out_ch, forms=forms, rngs=rngs))
                ch = out_ch
                if res in cfg.attn_resolutions:
                    attn.append(VaeAttention(ch, forms=forms, rngs=rngs))
            levels.insert(0, VaeLevel(blocks, attn, Upsample(ch, forms=forms, rngs=rngs) if i else None))
            if i:
                res *= 2
        self.up = nnx.List(levels)
        self.norm_out = group_norm(ch, 1e-6, rngs=rngs)
        self.conv_out = conv(ch, cfg.out_ch, 3, padding=1, forms=forms, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.forward_with_intermediates(z)[0]

    def forward_with_intermediates(self, z: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        h = self.conv_in(z)
        inter = {"conv_in": h}
        h = inter["mid_out"] = self.mid(h)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            h = inter[f"up{i}_block_last"] = level.blocks(h)
            if level.resample is not None:
                h = inter[f"up{i}_upsample"] = level.resample(h)
        h = inter["features"] = jax.nn.silu(self.norm_out(h))
        return self.conv_out(h), inter

    def features(self, z: jax.Array) -> jax.Array:
        """The activations entering `conv_out`, whose kernel sets the adaptive GAN weight in training."""
        return self.forward_with_intermediates(z)[1]["features"]


class AutoencoderKL(nnx.Module):
    """encode: image in [-1, 1] -> (mean, logvar); decode: unscaled latent -> image.

    `forms` (default: `kernel_forms()`, by backend) says how its kernels are computed.
    """

    def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs, forms: KernelForms | None = None):
        self.cfg = cfg
        forms = forms or kernel_forms()
        self.encoder = Encoder(cfg, forms=forms, rngs=rngs)
        self.decoder = Decoder(cfg, forms=forms, rngs=rngs)
        self.quant_conv = conv(2 * cfg.z_channels, 2 * cfg.embed_dim, 1, forms=forms, rngs=rngs)
        self.post_quant_conv = conv(cfg.embed_dim, cfg.z_channels, 1, forms=forms, rngs=rngs)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(self.post_quant_conv(z))

    def reconstruct(self, x: jax.Array) -> jax.Array:
        """decode(posterior mean): what the autoencoder keeps of an image."""
        return self.decode(self.encode(x)[0])

    def encode_latent(self, x: jax.Array, noise: jax.Array) -> jax.Array:
        """The diffusion latent: scale_factor * (posterior sample - latent_shift)."""
        mean, logvar = self.encode(x)
        return self.cfg.scale_factor * (posterior_sample(mean, logvar, noise) - self._shift(mean.dtype))

    def decode_latent(self, z: jax.Array) -> jax.Array:
        return self.decode(z / self.cfg.scale_factor + self._shift(z.dtype))

    def _shift(self, dtype) -> jax.Array | float:
        return jnp.asarray(self.cfg.latent_shift, dtype) if self.cfg.latent_shift else 0.0


def posterior_sample(mean: jax.Array, logvar: jax.Array, noise: jax.Array) -> jax.Array:
    return mean + jnp.exp(0.5 * logvar) * noise

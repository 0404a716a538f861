"""The LDM "openaimodel" UNet with spatial transformers: every expert and dynamic diffuser.

Structure (for a config with L levels and R res blocks per level):
  conv_in -> down_blocks (R per level, plus a Downsample between levels)
  -> middle (res, transformer, res) -> up_blocks (R + 1 per level, Upsample ending each
  level but the last) -> final norm, SiLU, conv.
Every down block's output, and that of conv_in, is a skip; each up block concatenates one
skip on channels, in reverse order, before it runs. Transformers sit at the downsample
rates listed in `attention_resolutions`; the middle block always has one.

`UNet.forward_with_features` also returns what DDGI reads from a frozen UNet: the middle block's
output, chosen up blocks' outputs and their cross-attention probabilities.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from cdiff_jax.config import UNetConfig
from cdiff_jax.nn.freeu import FreeU, apply_freeu
from cdiff_jax.nn.kernels import KernelForms, attention, attention_probabilities, kernel_forms, upsample_conv3x3
from cdiff_jax.nn.layers import conv, group_norm, layer_norm, linear
from cdiff_jax.nn.remat import checkpointed


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding laid out [cos | sin], in float32 like the reference."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class ResBlock(nnx.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added as a per-channel bias."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.in_norm = group_norm(in_ch, 1e-5, rngs=rngs)
        self.in_conv = conv(in_ch, out_ch, 3, padding=1, forms=forms, rngs=rngs)
        self.emb_proj = linear(emb_dim, out_ch, forms=forms, rngs=rngs)
        self.out_norm = group_norm(out_ch, 1e-5, rngs=rngs)
        self.out_conv = conv(out_ch, out_ch, 3, padding=1, zero_init=True, forms=forms, rngs=rngs)
        self.skip = conv(in_ch, out_ch, 1, forms=forms, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = self.in_conv(jax.nn.silu(self.in_norm(x)))
        h = h + self.emb_proj(jax.nn.silu(emb))[:, None, None, :]
        h = self.out_conv(jax.nn.silu(self.out_norm(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nnx.Module):
    """Multi-head (cross-)attention: q, k, v without bias, output projection with bias."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, *, forms: KernelForms, rngs: nnx.Rngs):
        inner = heads * head_dim
        self.heads = heads
        self.forms = forms
        self.to_q = linear(dim, inner, use_bias=False, forms=forms, rngs=rngs)
        self.to_k = linear(context_dim, inner, use_bias=False, forms=forms, rngs=rngs)
        self.to_v = linear(context_dim, inner, use_bias=False, forms=forms, rngs=rngs)
        self.to_out = linear(inner, dim, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, self.forms)
        return self.to_out(out)

    def probabilities(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """The head-averaged attention probabilities [B, N, tokens] of `__call__(x, context)`."""
        return attention_probabilities(self.to_q(x), self.to_k(context), self.heads, self.forms.precision)


class GEGLU(nnx.Module):
    """Feed-forward x -> W2 (a * gelu(g)) with [a, g] = W1 x, inner width 4 * dim."""

    def __init__(self, dim: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.proj = linear(dim, 8 * dim, forms=forms, rngs=rngs)
        self.out = linear(4 * dim, dim, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        a, gate = jnp.split(self.proj(x), 2, axis=-1)
        return self.out(a * jax.nn.gelu(gate, approximate=False))


class TransformerBlock(nnx.Module):
    """Pre-LN self-attention, cross-attention to the condition, then GEGLU."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, rngs=rngs)
        self.attn1 = Attention(dim, dim, heads, head_dim, forms=forms, rngs=rngs)
        self.norm2 = layer_norm(dim, rngs=rngs)
        self.attn2 = Attention(dim, context_dim, heads, head_dim, forms=forms, rngs=rngs)
        self.norm3 = layer_norm(dim, rngs=rngs)
        self.ff = GEGLU(dim, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        return self.forward(x, context, tap=False)[0]

    def forward(self, x: jax.Array, context: jax.Array, tap: bool) -> tuple[jax.Array, jax.Array | None]:
        """The output and, if `tap`, the cross-attention's head-averaged probabilities."""
        x = x + self.attn1(self.norm1(x))
        queries = self.norm2(x)
        probabilities = self.attn2.probabilities(queries, context) if tap else None
        x = x + self.attn2(queries, context)
        return x + self.ff(self.norm3(x)), probabilities


class SpatialTransformer(nnx.Module):
    """Attention over the H*W positions (row-major tokens), wrapped in 1x1 convs, residual."""

    def __init__(self, ch: int, cfg: UNetConfig, *, forms: KernelForms, rngs: nnx.Rngs):
        heads, head_dim = cfg.heads_for(ch)
        inner = heads * head_dim
        self.norm = group_norm(ch, 1e-6, rngs=rngs)
        self.proj_in = conv(ch, inner, 1, forms=forms, rngs=rngs)
        self.blocks = nnx.List(
            [
                TransformerBlock(inner, cfg.context_dim, heads, head_dim, forms=forms, rngs=rngs)
                for _ in range(cfg.transformer_depth)
            ]
        )
        self.proj_out = conv(inner, ch, 1, zero_init=True, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        return self.forward(x, context, tap=False)[0]

    def forward(self, x: jax.Array, context: jax.Array, tap: bool) -> tuple[jax.Array, jax.Array | None]:
        """The output and, if `tap`, the cross-attention probabilities [B, H*W, tokens], averaged
        over heads and over the blocks of a deeper transformer (one block in every released model)."""
        b, h, w, _ = x.shape
        tokens = self.proj_in(self.norm(x))
        tokens = tokens.reshape(b, h * w, tokens.shape[-1])
        probabilities = []
        for block in self.blocks:
            tokens, p = block.forward(tokens, context, tap)
            probabilities.append(p)
        mean = sum(probabilities) / len(probabilities) if tap else None
        return x + self.proj_out(tokens.reshape(b, h, w, -1)), mean


class Downsample(nnx.Module):
    """Stride-2 3x3 conv with symmetric padding 1 (unlike the autoencoder's)."""

    def __init__(self, ch: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.conv = conv(ch, ch, 3, stride=2, padding=1, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv (computed as `kernels.upsample_conv3x3`)."""

    def __init__(self, ch: int, *, forms: KernelForms, rngs: nnx.Rngs):
        self.forms = forms
        self.conv = conv(ch, ch, 3, padding=1, forms=forms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_conv3x3(x, self.conv.kernel[...], self.conv.bias[...], self.forms)


class UNetBlock(nnx.Module):
    """One entry of the down or up path: an optional res block, transformer and resampler."""

    def __init__(
        self,
        res: ResBlock | None = None,
        transformer: SpatialTransformer | None = None,
        resample: Downsample | Upsample | None = None,
    ):
        self.res = res
        self.transformer = transformer
        self.resample = resample

    def __call__(self, x: jax.Array, emb: jax.Array, context: jax.Array) -> jax.Array:
        return self.forward(x, emb, context, tap=False)[0]

    def forward(
        self, x: jax.Array, emb: jax.Array, context: jax.Array, tap: bool
    ) -> tuple[jax.Array, jax.Array | None]:
        """The output and, if `tap` and the block has a transformer, its cross-attention probabilities."""
        probabilities = None
        if self.res is not None:
            x = self.res(x, emb)
        if self.transformer is not None:
            x, probabilities = self.transformer.forward(x, context, tap)
        if self.resample is not None:
            x = self.resample(x)
        return x, probabilities


class UNet(nnx.Module):
    """eps (or influence logits) = UNet(x_t NHWC, integer t [B], context [B, tokens, ctx]).

    `forms` (default: `kernel_forms()`, by backend) says how its kernels are computed; `remat` names the
    activation checkpointing of each block (`cdiff_jax.nn.remat`).
    """

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs, forms: KernelForms | None = None):
        self.cfg = cfg
        self.remat = "none"
        forms = forms or kernel_forms()
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_linear_1 = linear(mc, emb_dim, forms=forms, rngs=rngs)
        self.time_linear_2 = linear(emb_dim, emb_dim, forms=forms, rngs=rngs)
        self.conv_in = conv(cfg.in_channels, mc, 3, padding=1, forms=forms, rngs=rngs)

        def transformer(ch: int, rate: int) -> SpatialTransformer | None:
            return SpatialTransformer(ch, cfg, forms=forms, rngs=rngs) if rate in cfg.attention_resolutions else None

        down, skip_channels, ch, rate = [], [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                res = ResBlock(ch, mult * mc, emb_dim, forms=forms, rngs=rngs)
                ch = mult * mc
                down.append(UNetBlock(res=res, transformer=transformer(ch, rate)))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down.append(UNetBlock(resample=Downsample(ch, forms=forms, rngs=rngs)))
                skip_channels.append(ch)
                rate *= 2
        self.down_blocks = nnx.List(down)

        self.mid_res_1 = ResBlock(ch, ch, emb_dim, forms=forms, rngs=rngs)
        self.mid_transformer = SpatialTransformer(ch, cfg, forms=forms, rngs=rngs)
        self.mid_res_2 = ResBlock(ch, ch, emb_dim, forms=forms, rngs=rngs)

        up = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                res = ResBlock(ch + skip_channels.pop(), mult * mc, emb_dim, forms=forms, rngs=rngs)
                ch = mult * mc
                last_of_level = level > 0 and i == cfg.num_res_blocks
                up.append(
                    UNetBlock(
                        res=res,
                        transformer=transformer(ch, rate),
                        resample=Upsample(ch, forms=forms, rngs=rngs) if last_of_level else None,
                    )
                )
                if last_of_level:
                    rate //= 2
        self.up_blocks = nnx.List(up)

        self.final_norm = group_norm(ch, 1e-5, rngs=rngs)
        self.final_conv = conv(ch, cfg.out_channels, 3, padding=1, zero_init=True, forms=forms, rngs=rngs)

    def time_embedding(self, t: jax.Array) -> jax.Array:
        emb = timestep_embedding(t, self.cfg.model_channels)
        return self.time_linear_2(jax.nn.silu(self.time_linear_1(emb)))

    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array, freeu: FreeU | None = None) -> jax.Array:
        """The output; with `freeu` (a static choice), FreeU re-weights the up path (`cdiff_jax.nn.freeu`)."""
        return self._forward(x, t, context, (), freeu)[0]

    def freeu_widths(self) -> tuple[int, int]:
        """The backbone widths where FreeU applies (b1, s1) and (b2, s2): the second- and third-deepest
        levels' (0, which no block has, where the UNet has fewer levels)."""
        mult, mc = self.cfg.channel_mult, self.cfg.model_channels
        return tuple(mc * mult[-k] if len(mult) >= k else 0 for k in (2, 3))

    def forward_with_intermediates(
        self, x: jax.Array, t: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The output and every block's output, named as in the reference's module order."""
        out, inter, _ = self._forward(x, t, context, ())
        return out, inter

    def cross_attention_up_blocks(self) -> tuple[int, ...]:
        """The up blocks with a (cross-attention) transformer: what DDGI taps."""
        return tuple(i for i, block in enumerate(self.up_blocks) if block.transformer is not None)

    def forward_with_features(
        self, x: jax.Array, t: jax.Array, context: jax.Array, up_blocks: tuple[int, ...]
    ) -> tuple[jax.Array, UNetFeatures]:
        """The output and the features of `up_blocks` (indices into `up_blocks`, a static choice).

        Attention probabilities are formed only for the tapped blocks, beside the attention
        itself, so the output is the untapped output bit for bit.
        """
        count = len(self.up_blocks)
        wrong = [i for i in up_blocks if not 0 <= i < count]
        if wrong:
            raise ValueError(
                f"UNet features: up blocks {wrong} do not exist; choose among 0..{count - 1} "
                f"(those with cross-attention: {self.cross_attention_up_blocks()})"
            )
        out, inter, probabilities = self._forward(x, t, context, tuple(sorted(set(up_blocks))))
        names = [f"output_block_{i:02d}" for i in sorted(set(up_blocks))]
        return out, UNetFeatures(
            middle=inter["middle_block"], up={n: inter[n] for n in names}, cross_attention=probabilities
        )

    def _forward(self, x, t, context, tapped: tuple[int, ...], freeu: FreeU | None = None):
        """(output, every block's output by name, cross-attention probabilities of the tapped up blocks)."""
        emb = self.time_embedding(t)
        inter = {"time_embed": emb}
        h = self.conv_in(x)
        skips = [h]
        inter["input_block_00"] = h
        untapped = checkpointed(lambda block, h, emb, context: block.forward(h, emb, context, False), self.remat)
        tapping = checkpointed(lambda block, h, emb, context: block.forward(h, emb, context, True), self.remat)
        res = checkpointed(ResBlock.__call__, self.remat)
        for i, block in enumerate(self.down_blocks, start=1):
            h = untapped(block, h, emb, context)[0]
            skips.append(h)
            inter[f"input_block_{i:02d}"] = h
        h = res(self.mid_res_1, h, emb)
        h = checkpointed(SpatialTransformer.__call__, self.remat)(self.mid_transformer, h, context)
        h = inter["middle_block"] = res(self.mid_res_2, h, emb)
        probabilities = {}
        for i, block in enumerate(self.up_blocks):
            skip = skips.pop()
            if freeu is not None:
                h, skip = apply_freeu(h, skip, freeu, self.freeu_widths())
            h, p = (tapping if i in tapped else untapped)(block, jnp.concatenate([h, skip], axis=-1), emb, context)
            inter[f"output_block_{i:02d}"] = h
            if p is not None:
                probabilities[f"output_block_{i:02d}"] = p
        out = self.final_conv(jax.nn.silu(self.final_norm(h)))
        return out, inter, probabilities


@struct.dataclass
class UNetFeatures:
    """What DDGI reads from a frozen UNet at one step (names as in `forward_with_intermediates`).

    `cross_attention` holds, per tapped up block with a transformer, softmax(q k^T) over the
    context tokens [B, H*W, tokens] at the transformer's resolution, averaged over heads: DDGI's
    modulation network takes one map per layer (a token max and spatial means of it), and the
    mean keeps that map independent of the head count and 1/heads the size (the released experts
    have 32 heads).
    """

    middle: jax.Array  # [B, h, w, C] the middle block's output: h_t
    up: dict[str, jax.Array]  # the tapped up blocks' outputs (after their upsampling, if any): f_t
    cross_attention: dict[str, jax.Array]  # [B, H*W, tokens] per tapped block with cross-attention: a_t

"""StyleGAN2 generator (config-f: 'skip' architecture), NHWC, numerically the network of
stylegan2-ada-pytorch's `training.networks.Generator` and of rosinality's `model.Generator`.

  z, c -> mapping (2nd-moment normalised z [+ embedded c], L equalised-lr FC + lrelu) -> w
  -> truncation towards w_avg -> ws [B, num_ws, w_dim] (W+)
  -> synthesis: learned 4x4 constant; per resolution conv0 (x2 up), conv1, toRGB; the RGB
     skip image is FIR-upsampled and summed over resolutions.

Weights are stored unscaled and multiplied by their equalised-learning-rate gain in the
forward pass, as the official code does, so a converter copies tensors without rescaling.
The modulated convolution scales activations instead of weights: the same sum of products as
a per-sample (grouped) convolution, but one ordinary batched convolution (bench/stylegan2.py).
What sampling reads besides parameters (w_avg, the per-layer constant noise) is a `Buffer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.config import StyleGAN2Config
from cdiff_jax.nn.kernels import NHWC, conv_function, kernel_forms
from cdiff_jax.noise import normal

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEMODULATION_EPS = 1e-8
NORMALISE_EPS = 1e-8
NOISE_MODES = ("random", "const", "none")


class Buffer(nnx.Variable):
    """A non-trainable array the network reads when sampling (w_avg, constant noise): part of the
    state, so it is converted, saved and restored with the weights, but outside `nnx.Param`."""


def lrelu(x: jax.Array, clamp: float | None = None) -> jax.Array:
    """Leaky ReLU (0.2) with gain sqrt(2), then the optional symmetric clamp, as `bias_act`."""
    x = jnp.where(x >= 0, x, LRELU_SLOPE * x) * LRELU_GAIN
    return x if clamp is None else jnp.clip(x, -clamp, clamp)


def normalize_2nd_moment(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + NORMALISE_EPS)


def fir_filter(taps: Sequence[int], gain: float) -> np.ndarray:
    """The separable 2-D FIR kernel (outer product, normalised to sum `gain`), as the official
    `resample_filter` buffers hold it (gain 1)."""
    f = np.asarray(taps, np.float64)
    f = np.outer(f, f)
    return (f / f.sum() * gain).astype(np.float32)


def _upfirdn_axis(
    x: jax.Array, taps: Sequence[int], axis: int, up: int, pad: tuple[int, int], gain: float
) -> jax.Array:
    """One axis of upfirdn2d: zero insertion by `up`, padding, convolution with the normalised
    `taps` (scaled to sum `gain`), written per output phase as sums of shifted slices of x: no multiply
    touches an inserted zero, which on XLA:CPU runs several times faster than a depthwise convolution
    over the dilated input."""
    g = np.asarray(taps, np.float64)[::-1]
    g = g / g.sum() * gain
    n = x.shape[axis]
    length = n * up + pad[0] + pad[1] - len(g) + 1
    out = length // up  # every caller's padding makes length a multiple of up
    phases = [[(g[j], (a + j - pad[0]) // up) for j in range(len(g)) if (a + j - pad[0]) % up == 0] for a in range(up)]
    shifts = [s for phase in phases for _, s in phase]
    lo, hi = max(0, -min(shifts)), max(0, max(shifts) + out - n)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (lo, hi)
    xp = jnp.pad(x, widths)
    ys = [
        sum(float(c) * jax.lax.slice_in_dim(xp, lo + s, lo + s + out, axis=axis) for c, s in phase) for phase in phases
    ]
    y = jnp.stack(ys, axis=axis + 1)
    return y.reshape(*x.shape[:axis], out * up, *x.shape[axis + 1 :])


def upfirdn(x: jax.Array, taps: Sequence[int], pad: tuple[int, int], up: int = 1, gain: float = 4.0) -> jax.Array:
    """upfirdn2d (without downsampling) of NHWC `x` with the separable filter `taps`, total gain `gain`."""
    axis_gain = math.sqrt(gain)
    return _upfirdn_axis(_upfirdn_axis(x, taps, 1, up, pad, axis_gain), taps, 2, up, pad, axis_gain)


def upsample_skip(img: jax.Array, taps: Sequence[int]) -> jax.Array:
    """x2 FIR upsampling of the RGB skip image (upfirdn2d.upsample2d)."""
    n = len(taps)
    return upfirdn(img, taps, ((n + 1) // 2, (n - 2) // 2), up=2)


def modulated_conv(
    x: jax.Array,
    weight: jax.Array,
    styles: jax.Array,
    *,
    demodulate: bool,
    up_taps: Sequence[int] | None = None,
    convolve=jax.lax.conv_general_dilated,
    precision=None,
) -> jax.Array:
    """Convolution with weights scaled per sample by `styles` over input channels (and, with
    `demodulate`, renormalised per output channel), computed as scale - convolve - rescale.

    x [B, H, W, I], weight [k, k, I, O] (HWIO), styles [B, I]. With `up_taps` the convolution is
    transposed with stride 2 (the zero-dilated input correlated with the flipped kernel) and then
    FIR-filtered, which doubles the resolution as the official up-convolution does. `convolve` computes
    the stride-1 convolution (a form of `cdiff_jax.nn.kernels`).
    """
    k = weight.shape[0]
    x = x * styles[:, None, None, :].astype(x.dtype)
    if up_taps is None:
        x = convolve(x, weight, (1, 1), ((k // 2, k // 2),) * 2, dimension_numbers=NHWC, precision=precision)
    else:
        x = jax.lax.conv_general_dilated(
            x,
            weight[::-1, ::-1],
            (1, 1),
            ((k - 1, k - 1),) * 2,
            lhs_dilation=(2, 2),
            dimension_numbers=NHWC,
            precision=precision,
        )
        n = len(up_taps)  # the official padding arithmetic (conv2d_resample) for padding k // 2
        x = upfirdn(x, up_taps, (k // 2 + (n + 1) // 2 - (k - 1), k // 2 + (n - 2) // 2 - (k - 2)))
    if demodulate:
        energy = jnp.square(styles) @ jnp.sum(jnp.square(weight), axis=(0, 1))  # [B, O]
        x = x * jax.lax.rsqrt(energy + DEMODULATION_EPS)[:, None, None, :].astype(x.dtype)
    return x


class EqualizedLinear(nnx.Module):
    """Fully connected layer with equalised learning rate: y = x (W lr/sqrt(in)) + b lr."""

    def __init__(
        self, in_features: int, out_features: int, *, lr_multiplier: float = 1.0, bias_init: float = 0.0, rngs: nnx.Rngs
    ):
        self.weight = nnx.Param(normal(rngs.params(), (in_features, out_features)) / lr_multiplier)
        self.bias = nnx.Param(jnp.full((out_features,), bias_init, jnp.float32))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ (self.weight[...] * self.weight_gain) + self.bias[...] * self.bias_gain


class MappingNetwork(nnx.Module):
    """z [B, z_dim] (+ c [B, c_dim]) -> w [B, w_dim]; `w_avg` is the truncation centre (a
    discriminator's label mapping has none)."""

    def __init__(self, cfg: StyleGAN2Config, *, rngs: nnx.Rngs, with_w_avg: bool = True):
        embed = (cfg.embed_features or cfg.w_dim) if cfg.c_dim else 0
        hidden = cfg.mapping_layer_features or cfg.w_dim
        self.embed = EqualizedLinear(cfg.c_dim, embed, rngs=rngs) if cfg.c_dim else None
        widths = [cfg.z_dim + embed] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        self.layers = nnx.List(
            [
                EqualizedLinear(a, b, lr_multiplier=cfg.mapping_lr_multiplier, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:])
            ]
        )
        self.w_avg = Buffer(jnp.zeros((cfg.w_dim,), jnp.float32)) if with_w_avg else None

    def inputs(self, z: jax.Array, c: jax.Array | None) -> jax.Array:
        """The input of the first FC layer: normalised z, then the normalised label embedding."""
        parts = [normalize_2nd_moment(z)] if z.shape[-1] else []
        if self.embed is not None:
            parts.append(normalize_2nd_moment(self.embed(c)))
        return jnp.concatenate(parts, axis=-1)

    def __call__(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        x = self.inputs(z, c)
        for layer in self.layers:
            x = lrelu(layer(x))
        return x


class SynthesisLayer(nnx.Module):
    """Modulated 3x3 conv (demodulated; x2 up if `up`), + noise * strength, + bias, lrelu, clamp."""

    def __init__(
        self, in_channels: int, out_channels: int, resolution: int, cfg: StyleGAN2Config, *, up: bool, rngs: nnx.Rngs
    ):
        self.affine = EqualizedLinear(cfg.w_dim, in_channels, bias_init=1.0, rngs=rngs)
        self.weight = nnx.Param(normal(rngs.params(), (3, 3, in_channels, out_channels)))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
        self.noise_strength = nnx.Param(jnp.zeros((), jnp.float32))
        self.noise_const = Buffer(normal(rngs.params(), (resolution, resolution)))
        self.up_taps = cfg.resample_filter if up else None
        self.clamp = cfg.conv_clamp
        forms = kernel_forms()  # decided at construction: part of the graphdef, like every layer's
        self.convolve = conv_function(forms)
        self.precision = forms.precision

    def __call__(self, x: jax.Array, w: jax.Array, noise: jax.Array | None) -> jax.Array:
        x = modulated_conv(
            x,
            self.weight[...],
            self.affine(w),
            demodulate=True,
            up_taps=self.up_taps,
            convolve=self.convolve,
            precision=self.precision,
        )
        if noise is not None:
            x = x + noise[..., None] * self.noise_strength[...]
        return lrelu(x + self.bias[...], self.clamp)


class ToRGB(nnx.Module):
    """Modulated 1x1 conv without demodulation (styles scaled by 1/sqrt(C_in)), + bias, clamp."""

    def __init__(self, in_channels: int, cfg: StyleGAN2Config, *, rngs: nnx.Rngs):
        self.affine = EqualizedLinear(cfg.w_dim, in_channels, bias_init=1.0, rngs=rngs)
        self.weight = nnx.Param(normal(rngs.params(), (in_channels, cfg.img_channels)))
        self.bias = nnx.Param(jnp.zeros((cfg.img_channels,), jnp.float32))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.clamp = cfg.conv_clamp

    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        styles = self.affine(w) * self.weight_gain
        x = jnp.einsum("bhwi,io->bhwo", x * styles[:, None, None, :], self.weight[...]) + self.bias[...]
        return x if self.clamp is None else jnp.clip(x, -self.clamp, self.clamp)


class SynthesisBlock(nnx.Module):
    """One resolution: (4x4 constant | conv0 with x2 up), conv1, toRGB added to the upsampled skip image.

    `up=False` keeps the input's resolution (conv0 and the skip image unscaled): EG3D's
    super-resolution `SynthesisBlockNoUp`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        cfg: StyleGAN2Config,
        *,
        rngs: nnx.Rngs,
        up: bool = True,
    ):
        self.resolution = resolution
        self.resample_filter = cfg.resample_filter
        self.up = up
        if in_channels == 0:
            self.const = nnx.Param(normal(rngs.params(), (resolution, resolution, out_channels)))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(in_channels, out_channels, resolution, cfg, up=up, rngs=rngs)
        self.conv1 = SynthesisLayer(out_channels, out_channels, resolution, cfg, up=False, rngs=rngs)
        self.torgb = ToRGB(out_channels, cfg, rngs=rngs)

    @property
    def convs(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.conv0 is None else [self.conv0, self.conv1]

    def __call__(
        self, x: jax.Array | None, img: jax.Array | None, ws: jax.Array, noises: Sequence[jax.Array | None]
    ) -> tuple[jax.Array, jax.Array]:
        """ws [B, len(convs) + 1, w_dim]: one row per conv, then the toRGB's row."""
        if self.const is not None:
            x = jnp.broadcast_to(self.const[...], (ws.shape[0], *self.const.shape))
        for i, (layer, noise) in enumerate(zip(self.convs, noises)):
            x = layer(x, ws[:, i], noise)
        y = self.torgb(x, ws[:, len(self.convs)])
        if img is None:
            return x, y
        return x, (upsample_skip(img, self.resample_filter) if self.up else img) + y


class SynthesisNetwork(nnx.Module):
    """ws [B, num_ws, w_dim] -> image [B, R, R, img_channels] (raw: not clipped to [-1, 1])."""

    def __init__(self, cfg: StyleGAN2Config, *, rngs: nnx.Rngs):
        blocks, in_channels = [], 0
        for res in cfg.block_resolutions:
            blocks.append(SynthesisBlock(in_channels, cfg.channels(res), res, cfg, rngs=rngs))
            in_channels = cfg.channels(res)
        self.blocks = nnx.List(blocks)

    @property
    def noise_layers(self) -> list[SynthesisLayer]:
        """The layers that add noise, in the official order (b4.conv1, b8.conv0, b8.conv1, ...)."""
        return [layer for block in self.blocks for layer in block.convs]

    def block_ws(self, ws: jax.Array) -> list[jax.Array]:
        """Each block's rows of W+: ws[i : i + num_conv + 1], i advancing by num_conv, so a toRGB
        shares its row with the next block's conv0."""
        rows, i = [], 0
        for block in self.blocks:
            n = len(block.convs)
            rows.append(ws[:, i : i + n + 1])
            i += n
        return rows

    def noises(
        self, batch: int, noise_mode: str, key: jax.Array | None, noise: Sequence[jax.Array] | None
    ) -> list[jax.Array | None]:
        """Per noise layer: explicit `noise` ([R, R] or [B, R, R] each) if given, else by `noise_mode`."""
        layers = self.noise_layers
        if noise is not None:
            if len(noise) != len(layers):
                raise ValueError(
                    f"noise: got {len(noise)} arrays, the generator has {len(layers)} noise layers "
                    f"(resolutions {[layer.noise_const.shape[0] for layer in layers]})"
                )
            return list(noise)
        if noise_mode == "none":
            return [None] * len(layers)
        if noise_mode == "const":
            return [layer.noise_const[...] for layer in layers]
        if key is None:
            raise ValueError("noise_mode='random' needs a PRNG key (key=...)")
        keys = jax.random.split(key, len(layers))
        return [normal(k, (batch, *layer.noise_const.shape)) for k, layer in zip(keys, layers)]

    def __call__(self, ws: jax.Array, noises: Sequence[jax.Array | None]) -> jax.Array:
        x = img = None
        it = iter(noises)
        for block, rows in zip(self.blocks, self.block_ws(ws)):
            x, img = block(x, img, rows, [next(it) for _ in block.convs])
        return img


class Generator(nnx.Module):
    """mapping (z, c -> w) and synthesis (W+ -> image); sample through the pure functions below."""

    def __init__(self, cfg: StyleGAN2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg, rngs=rngs)
        self.synthesis = SynthesisNetwork(cfg, rngs=rngs)


def truncate(ws: jax.Array, w_avg: jax.Array, psi, cutoff: int | None = None) -> jax.Array:
    """Move the first `cutoff` rows (all if None) of W+ towards w_avg: w_avg + psi (w - w_avg),
    in torch.lerp's two-sided form so that rounding matches the official code."""
    delta = ws - w_avg
    pulled = jnp.where(psi < 0.5, w_avg + psi * delta, ws - delta * (1 - psi))
    if cutoff is None:
        return pulled
    return jnp.concatenate([pulled[:, :cutoff], ws[:, cutoff:]], axis=1)


def _check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode {noise_mode!r}: expected one of {NOISE_MODES}")


def _labels(cfg: StyleGAN2Config, z: jax.Array, c: jax.Array | None) -> jax.Array | None:
    if cfg.c_dim and (c is None or c.shape != (z.shape[0], cfg.c_dim)):
        raise ValueError(f"c: this generator is conditional; pass labels of shape [{z.shape[0]}, {cfg.c_dim}]")
    return c


@jax.jit(static_argnames=("graphdef", "truncation_cutoff"))
def map_latents(
    graphdef,
    state,
    z: jax.Array,
    c: jax.Array | None = None,
    *,
    truncation_psi=1.0,
    truncation_cutoff: int | None = None,
) -> jax.Array:
    """z [B, z_dim] (c [B, c_dim]) -> ws [B, num_ws, w_dim], truncated towards w_avg."""
    g = nnx.merge(graphdef, state)
    w = g.mapping(z, _labels(g.cfg, z, c))
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], g.cfg.num_ws, w.shape[-1]))
    return truncate(ws, g.mapping.w_avg[...], jnp.asarray(truncation_psi, ws.dtype), truncation_cutoff)


@jax.jit(static_argnames=("graphdef", "noise_mode"))
def synthesize(
    graphdef,
    state,
    ws: jax.Array,
    *,
    noise_mode: str = "const",
    key: jax.Array | None = None,
    noise: Sequence[jax.Array] | None = None,
) -> jax.Array:
    """ws [B, num_ws, w_dim] -> images [B, R, R, C]. `noise` (one array per noise layer, [R, R] or
    [B, R, R]) overrides `noise_mode`; 'random' draws from `key`."""
    _check_noise_mode(noise_mode)
    g = nnx.merge(graphdef, state)
    if ws.shape[1:] != (g.cfg.num_ws, g.cfg.w_dim):
        raise ValueError(f"ws: shape {ws.shape}; this generator takes [B, {g.cfg.num_ws}, {g.cfg.w_dim}]")
    return g.synthesis(ws, g.synthesis.noises(ws.shape[0], noise_mode, key, noise))


@jax.jit(static_argnames=("graphdef", "truncation_cutoff", "noise_mode"))
def generate(
    graphdef,
    state,
    z: jax.Array,
    c: jax.Array | None = None,
    *,
    truncation_psi=1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "const",
    key: jax.Array | None = None,
    noise: Sequence[jax.Array] | None = None,
) -> jax.Array:
    """z (c) -> images [B, R, R, C]: `map_latents` then `synthesize` in one program."""
    ws = map_latents(graphdef, state, z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
    return synthesize(graphdef, state, ws, noise_mode=noise_mode, key=key, noise=noise)

"""StyleGAN2's modulated convolution on XLA:CPU: scaling activations (what `nn.stylegan2` does)
against per-sample weights in one grouped convolution (the official "fused" path), at the real
generators' layer shapes; and one whole 256x256 generator (paper256 sizes) for a per-image figure.

    python bench/stylegan2.py [--batch 4]

Both forms are timed in the same run; the ratio is the figure to compare.
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx
from timing import best_time

from cdiff_jax.config import StyleGAN2Config
from cdiff_jax.nn import stylegan2 as sg
from cdiff_jax.nn.kernels import NHWC

SHAPES = [  # (side, in channels, out channels): config-f / paper256 3x3 layers
    (8, 512, 512), (32, 512, 512), (64, 512, 512), (128, 256, 256), (256, 128, 128),
]


def grouped_modulated_conv(x, weight, styles):
    """Per-sample demodulated weights, all samples in one convolution with feature groups = batch."""
    batch, h, w, cin = x.shape
    k, cout = weight.shape[0], weight.shape[-1]
    wb = weight[None] * styles[:, None, None, :, None]  # [B, k, k, I, O]
    wb = wb * jax.lax.rsqrt(jnp.sum(jnp.square(wb), axis=(1, 2, 3), keepdims=True) + sg.DEMODULATION_EPS)
    wb = jnp.transpose(wb, (1, 2, 3, 0, 4)).reshape(k, k, cin, batch * cout)
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, w, batch * cin)
    y = jax.lax.conv_general_dilated(xg, wb, (1, 1), ((k // 2, k // 2),) * 2, dimension_numbers=NHWC,
                                     feature_group_count=batch)
    return jnp.transpose(y.reshape(h, w, batch, cout), (2, 0, 1, 3))


def activation_modulated_conv(x, weight, styles):
    return sg.modulated_conv(x, weight, styles, demodulate=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    for side, cin, cout in SHAPES:
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (args.batch, side, side, cin))
        weight = jax.random.normal(keys[1], (3, 3, cin, cout))
        styles = 1 + 0.1 * jax.random.normal(keys[2], (args.batch, cin))
        ours = jax.jit(activation_modulated_conv)
        grouped = jax.jit(grouped_modulated_conv)
        err = jnp.abs(ours(x, weight, styles) - grouped(x, weight, styles)).max()
        t_ours, t_grouped = best_time(ours, x, weight, styles), best_time(grouped, x, weight, styles)
        print(f"{side}x{side} {cin}->{cout}, batch {args.batch}: activations {t_ours * 1e3:.1f} ms, grouped "
              f"{t_grouped * 1e3:.1f} ms: {t_grouped / t_ours:.2f}x (max |diff| {err:.1e})")
    cfg = StyleGAN2Config(img_resolution=256, channel_base=16384)
    graphdef, state = nnx.split(sg.Generator(cfg, rngs=nnx.Rngs(0)))
    z = jax.random.normal(jax.random.key(1), (args.batch, cfg.z_dim))
    seconds = best_time(lambda z: sg.generate(graphdef, state, z), z)
    print(f"generator 256x256 (paper256 sizes), batch {args.batch}: {seconds * 1e3:.0f} ms, "
          f"{seconds / args.batch * 1e3:.0f} ms per image")


if __name__ == "__main__":
    main()

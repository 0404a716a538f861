"""StyleGAN2's modulated convolution on XLA:CPU: scaling activations (what `nn.stylegan2` does)
against per-sample weights in one grouped convolution (the official "fused" path), at the real
generators' layer shapes; and one whole 256x256 generator (paper256 sizes) for a per-image figure.

    python bench/stylegan2.py [--batch 4]

Both forms are timed in the same run; the ratio is the figure to compare.

With --official, instead: the whole 1024x1024 generator (config-f sizes: channel_base 32768, channel_max 512,
8 mapping layers; random weights, float32, batch 1, truncation 1, noise_mode 'const'), mapping + synthesis,
against the official stylegan2-ada-pytorch Generator of the same configuration, timed in the same run:
bench/reference_stylegan2_torch.py runs in the torch environment as a child process and the two sides take
turns, one forward each per round, after a warm-up (our compilation) each.

    python bench/stylegan2.py --official STYLEGAN2_ADA_CHECKOUT [--rounds 3]   # torch from .venv-reference
"""

import argparse
import os
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from timing import best_time

from cdiff_jax.config import StyleGAN2Config
from cdiff_jax.nn import stylegan2 as sg
from cdiff_jax.nn.kernels import NHWC

SHAPES = [  # (side, in channels, out channels): config-f / paper256 3x3 layers
    (8, 512, 512),
    (32, 512, 512),
    (64, 512, 512),
    (128, 256, 256),
    (256, 128, 128),
]


def grouped_modulated_conv(x, weight, styles):
    """Per-sample demodulated weights, all samples in one convolution with feature groups = batch."""
    batch, h, w, cin = x.shape
    k, cout = weight.shape[0], weight.shape[-1]
    wb = weight[None] * styles[:, None, None, :, None]  # [B, k, k, I, O]
    wb = wb * jax.lax.rsqrt(jnp.sum(jnp.square(wb), axis=(1, 2, 3), keepdims=True) + sg.DEMODULATION_EPS)
    wb = jnp.transpose(wb, (1, 2, 3, 0, 4)).reshape(k, k, cin, batch * cout)
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, w, batch * cin)
    y = jax.lax.conv_general_dilated(
        xg, wb, (1, 1), ((k // 2, k // 2),) * 2, dimension_numbers=NHWC, feature_group_count=batch
    )
    return jnp.transpose(y.reshape(h, w, batch, cout), (2, 0, 1, 3))


def activation_modulated_conv(x, weight, styles):
    return sg.modulated_conv(x, weight, styles, demodulate=True)


def timed_forward(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def against_official(args):
    """Alternating rounds of one 1024 forward each: ours in this process, the official one in a child."""
    reference = subprocess.Popen(
        [
            args.reference_python,
            str(Path(__file__).with_name("reference_stylegan2_torch.py")),
            "--source",
            args.official,
            "--resolution",
            "1024",
            "--threads",
            str(args.threads),
            "--serve",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = reference.stdout.readline().strip()  # built and warmed up before ours starts compiling
        if ready != "ready":
            raise RuntimeError(f"reference_stylegan2_torch.py did not start (said {ready!r})")
        cfg = StyleGAN2Config()  # 1024, channel_base 32768, channel_max 512, 8 mapping layers, no clamp
        generator = sg.Generator(cfg, rngs=nnx.Rngs(0))
        params = sum(x.size for x in jax.tree.leaves(nnx.state(generator, nnx.Param)))
        graphdef, state = nnx.split(generator)
        z = jax.random.normal(jax.random.key(1), (1, cfg.z_dim))

        def forward(z):
            return sg.generate(graphdef, state, z, truncation_psi=1.0, noise_mode="const")

        side = cfg.img_resolution
        print(
            f"jax {jax.__version__} {jax.default_backend()}, our Generator {side}x{side}, {params / 1e6:.1f} M "
            "parameters, float32, batch 1",
            flush=True,
        )
        first = timed_forward(forward, z)
        image = forward(z)
        assert image.shape == (1, side, side, 3) and image.dtype == jnp.float32
        print(f"ours: first call (compilation included) {first:.1f} s", flush=True)

        def official():
            reference.stdin.write("forward\n")
            reference.stdin.flush()
            return float(reference.stdout.readline())

        ours, theirs = [], []
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            if r % 2 == 0:  # alternate who goes first
                ours.append(timed_forward(forward, z))
                theirs.append(official())
            else:
                theirs.append(official())
                ours.append(timed_forward(forward, z))
            print(
                f"round {r + 1} (load average {load:.2f}): ours {ours[-1]:.3f} s, official {theirs[-1]:.3f} s, "
                f"official / ours {theirs[-1] / ours[-1]:.2f}",
                flush=True,
            )
    finally:
        reference.stdin.close()
        reference.wait()
    print(
        f"best of {args.rounds}: ours {min(ours):.3f} s/image, official {min(theirs):.3f} s/image, "
        f"official / ours {min(theirs) / min(ours):.2f}; load average now {os.getloadavg()}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--official",
        metavar="CHECKOUT",
        help="checkout of NVlabs/stylegan2-ada-pytorch: time the 1024 generator against it instead",
    )
    parser.add_argument(
        "--reference-python",
        default=str(Path(__file__).resolve().parents[1] / ".venv-reference" / "bin" / "python"),
        help="python of the torch environment (default: the repository's .venv-reference)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the official side")
    args = parser.parse_args()
    if args.official:
        return against_official(args)
    for side, cin, cout in SHAPES:
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (args.batch, side, side, cin))
        weight = jax.random.normal(keys[1], (3, 3, cin, cout))
        styles = 1 + 0.1 * jax.random.normal(keys[2], (args.batch, cin))
        ours = jax.jit(activation_modulated_conv)
        grouped = jax.jit(grouped_modulated_conv)
        err = jnp.abs(ours(x, weight, styles) - grouped(x, weight, styles)).max()
        t_ours, t_grouped = best_time(ours, x, weight, styles), best_time(grouped, x, weight, styles)
        print(
            f"{side}x{side} {cin}->{cout}, batch {args.batch}: activations {t_ours * 1e3:.1f} ms, grouped "
            f"{t_grouped * 1e3:.1f} ms: {t_grouped / t_ours:.2f}x (max |diff| {err:.1e})"
        )
    cfg = StyleGAN2Config(img_resolution=256, channel_base=16384)
    graphdef, state = nnx.split(sg.Generator(cfg, rngs=nnx.Rngs(0)))
    z = jax.random.normal(jax.random.key(1), (args.batch, cfg.z_dim))
    seconds = best_time(lambda z: sg.generate(graphdef, state, z), z)
    print(
        f"generator 256x256 (paper256 sizes), batch {args.batch}: {seconds * 1e3:.0f} ms, "
        f"{seconds / args.batch * 1e3:.0f} ms per image"
    )


if __name__ == "__main__":
    main()

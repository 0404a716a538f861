"""Nearest x2 upsampling then a 3x3 convolution: as written (upsample, convolve: the "plain" form)
against the "phases" form of `kernels.upsample_conv3x3` (four 2x2 convolutions of the input), at the
released 512 models' upsampling sizes, convolutions in the form `kernels.kernel_forms()` picks for
this backend.

    python bench/upsample.py

Both are timed in the same run; the ratio is the figure to compare.
"""

import dataclasses

import jax
import jax.numpy as jnp
from timing import best_time

from cdiff_jax.nn.kernels import kernel_forms, upsample_conv3x3

SHAPES = [  # (input side, channels, where)
    (256, 256, "autoencoder, to 512x512"),
    (128, 512, "autoencoder, to 256x256"),
    (64, 512, "autoencoder, to 128x128"),
    (32, 384, "expert, to 64x64"),
    (16, 576, "expert, to 32x32"),
    (8, 960, "expert, to 16x16"),
]


def main():
    forms = kernel_forms()
    upsample = jax.jit(upsample_conv3x3, static_argnums=3)
    plain_forms, phases_forms = (dataclasses.replace(forms, upsample=form) for form in ("plain", "phases"))
    for side, channels, where in SHAPES:
        x = jax.random.normal(jax.random.key(0), (1, side, side, channels))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) * 0.01
        bias = jnp.zeros((channels,))
        plain = best_time(upsample, x, kernel, bias, plain_forms)
        phases = best_time(upsample, x, kernel, bias, phases_forms)
        print(
            f"{where} ({side}x{side}, {channels} channels): upsample then convolve {plain * 1e3:.1f} ms, "
            f"four phases {phases * 1e3:.1f} ms: {plain / phases:.2f}x faster"
        )


if __name__ == "__main__":
    main()

"""XLA's convolution against the same convolution as one matmul (im2col), at the released 512
expert's shapes (XLA:CPU), and which one `layers.conv` picks.

    python bench/conv.py

Both are timed in the same run; the ratio is the figure to compare.
"""

import jax

from cdiff_jax.nn import layers
from timing import best_time

SHAPES = [  # (side, in channels, out channels, kernel): the 512 expert's res-block and skip convolutions
    (64, 192, 192, 3), (64, 576, 192, 3),
    (32, 384, 384, 3), (32, 768, 384, 3),
    (16, 576, 576, 3), (16, 1152, 576, 3), (16, 1536, 576, 3), (16, 960, 960, 3),
    (8, 576, 960, 3), (8, 960, 960, 3), (8, 1920, 960, 3), (8, 1920, 960, 1),
]


def main():
    defaults = layers.MATMUL_CONV_MAX_POSITIONS, layers.MATMUL_CONV_MIN_FEATURES
    for batch in (1, 2):
        for side, cin, cout, kernel in SHAPES:
            x = jax.random.normal(jax.random.key(0), (batch, side, side, cin))
            w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout)) * 0.01
            timings = {}
            for name, limits in (("xla", (0, 1 << 62)), ("matmul", (1 << 62, 0))):
                # read at trace time: each jit below traces anew
                layers.MATMUL_CONV_MAX_POSITIONS, layers.MATMUL_CONV_MIN_FEATURES = limits
                fn = jax.jit(lambda x, w: layers.conv_general_dilated(x, w, (1, 1), "SAME",
                                                                      dimension_numbers=layers.NHWC))
                timings[name] = best_time(fn, x, w)
            layers.MATMUL_CONV_MAX_POSITIONS, layers.MATMUL_CONV_MIN_FEATURES = defaults
            picks = ("matmul" if batch * side * side <= defaults[0] and kernel * kernel * cin >= defaults[1]
                     else "xla")
            print(f"batch {batch}, {side}x{side}, {kernel}x{kernel} {cin}->{cout}: XLA {timings['xla'] * 1e3:.1f} ms, "
                  f"matmul {timings['matmul'] * 1e3:.1f} ms ({timings['xla'] / timings['matmul']:.2f}x); "
                  f"the rule picks {picks}")


if __name__ == "__main__":
    main()

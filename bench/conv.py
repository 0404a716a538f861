"""XLA's convolution against the same convolution as one matmul (im2col) and as Winograd
F(2x2, 3x3), at the released 512 models' shapes, and which form `kernels.kernel_forms()` picks for
this backend.

    python bench/conv.py

All forms are timed in the same run; the ratios (XLA's time over each form's) are the figures to
compare. The matmul form is
skipped where its shifted copies of the input would not fit comfortably in memory.
"""

import jax
from timing import best_time

from cdiff_jax.nn.kernels import NHWC, KernelForms, conv_form, conv_function, kernel_forms

SHAPES = [  # (side, in channels, out channels, kernel)
    # the expert's res-block and skip convolutions
    (64, 192, 192, 3),
    (64, 576, 192, 3),
    (64, 384, 192, 3),
    (32, 384, 384, 3),
    (32, 768, 384, 3),
    (16, 576, 576, 3),
    (16, 1152, 576, 3),
    (16, 1536, 576, 3),
    (16, 960, 960, 3),
    (8, 576, 960, 3),
    (8, 960, 960, 3),
    (8, 1920, 960, 3),
    (8, 1920, 960, 1),
    # the autoencoder's decoder
    (64, 512, 512, 3),
    (128, 512, 512, 3),
    (256, 512, 256, 3),
    (256, 256, 256, 3),
    (512, 256, 128, 3),
    (512, 128, 128, 3),
]


def main():
    rule = kernel_forms().conv
    for batch in (1, 2):
        for side, cin, cout, kernel in SHAPES:
            if batch > 1 and side > 64:  # the decoder runs once per image, at batch 1 here
                continue
            x = jax.random.normal(jax.random.key(0), (batch, side, side, cin))
            w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout)) * 0.01
            forms = ["xla"]
            if batch * side * side * kernel * kernel * cin * 4 <= 1 << 30:
                forms.append("matmul")
            if kernel == 3:
                forms.append("winograd")
            timings = {}
            for form in forms:
                convolve = conv_function(KernelForms(conv="lax" if form == "xla" else form))
                fn = jax.jit(lambda x, w, convolve=convolve: convolve(x, w, (1, 1), "SAME", dimension_numbers=NHWC))
                timings[form] = best_time(fn, x, w)
            flops = 2 * batch * side * side * kernel * kernel * cin * cout
            report = ", ".join(f"{form} {t * 1e3:.1f} ms ({timings['xla'] / t:.2f}x)" for form, t in timings.items())
            print(
                f"batch {batch}, {side}x{side}, {kernel}x{kernel} {cin}->{cout} ({flops / 1e9:.1f} GFLOP, XLA at "
                f"{flops / timings['xla'] / 1e9:.0f} GFLOP/s): {report}; the rule picks "
                f"{conv_form(x.shape, w.shape, ((kernel // 2,) * 2,) * 2, rule)}",
                flush=True,
            )


if __name__ == "__main__":
    main()

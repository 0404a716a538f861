"""Convolution gradients inside `lax.scan` / `lax.cond` versus at the top level of a jitted program.

    python bench/scan_gradients.py

The demo autoencoder's training gradient (batch 8, 64x64) is timed three ways: as the whole
program, as the body of a one-step `lax.scan`, and as a branch of `lax.cond`. This is why the
CPU loop policy (cdiff_jax/optimization.py) copies every step into the program instead of a rolled
scan and has the autoencoder stage pick its program by step on the host instead of a `lax.cond`.
"""

import platform

import jax
import jax.numpy as jnp
from flax import nnx
from timing import best_time, matmul_flops_per_second

from cdiff_jax.config import load_config
from cdiff_jax.system import init_system


def main():
    ae = init_system(load_config("demo_faces.py:text"), seed=0).autoencoder
    graphdef, params = nnx.split(ae)
    x = jax.random.uniform(jax.random.key(0), (8, 64, 64, 3), minval=-1, maxval=1)

    def grads(p):
        return jax.grad(
            lambda p: jnp.mean(jnp.abs(nnx.merge(graphdef, p).decode(nnx.merge(graphdef, p).encode(x)[0]) - x))
        )(p)

    top = jax.jit(grads)
    scanned = jax.jit(lambda p: jax.lax.scan(lambda c, _: (c, grads(c)), p, None, length=1)[1])
    branch = jax.jit(lambda p, on: jax.lax.cond(on, grads, lambda p: jax.tree.map(jnp.zeros_like, p), p))
    flops = matmul_flops_per_second()
    t_top = best_time(top, params, repeats=3)
    t_scan = best_time(scanned, params, repeats=1)
    t_cond = best_time(branch, params, True, repeats=1)
    print(
        f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} CPU device(s), "
        f"jax {jax.__version__}"
    )
    print(f"matmul baseline: {flops / 1e9:.0f} GFLOP/s")
    print(f"autoencoder gradient, top level:  {t_top:.3f} s")
    print(f"  inside a 1-step lax.scan:       {t_scan:.3f} s  ({t_scan / t_top:.0f}x)")
    print(f"  inside a lax.cond branch:       {t_cond:.3f} s  ({t_cond / t_top:.0f}x)")


if __name__ == "__main__":
    main()

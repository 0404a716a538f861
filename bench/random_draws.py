"""Compile time of Gaussian draws on XLA:CPU: `jax.random.normal` of a many-axis shape against the same
values drawn flat and reshaped (`cdiff_jax.noise.normal`), and what that does to the toy GAN's training
iteration, whose generator draws one noise image per layer.

    python bench/random_draws.py

Each program is compiled fresh (no compilation cache); both forms are measured in the same run, and the
ratio is the figure to compare.
"""

import time

import jax

from cdiff_jax.noise import normal

SHAPES = [(4, 16, 16), (8, 64, 64, 3), (32, 16, 16, 4)]


def compile_seconds(fn, *args) -> float:
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - start


def main():
    key = jax.random.key(0)
    print(f"jax {jax.__version__}, threefry_partitionable={jax.config.jax_threefry_partitionable}")
    for shape in SHAPES:
        many = compile_seconds(lambda k: jax.random.normal(k, shape), key)
        flat = compile_seconds(lambda k: normal(k, shape), key)
        print(f"one draw of {shape}: jax.random.normal {many:.2f} s, flat {flat:.2f} s to compile: {many / flat:.1f}x")
    draws = 5  # the layers of a 16x16 StyleGAN2 that add noise
    many = compile_seconds(lambda k: [jax.random.normal(s, (4, 16, 16)) for s in jax.random.split(k, draws)], key)
    flat = compile_seconds(lambda k: [normal(s, (4, 16, 16)) for s in jax.random.split(k, draws)], key)
    print(f"{draws} draws of (4, 16, 16): jax.random.normal {many:.2f} s, flat {flat:.2f} s: {many / flat:.1f}x")


if __name__ == "__main__":
    main()

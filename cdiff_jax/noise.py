"""Gaussian noise drawn the way XLA:CPU compiles quickly.

`jax.random.normal` of a many-axis shape compiles several times slower on XLA:CPU than the same number
of values drawn as one flat vector (seconds per call site: BENCHMARKS.md, "Random draws"), and the draw is
the same (the same random bits; values equal up to the last bit vectorisation may change), so every draw
of the package goes through `normal`. Accelerators lose nothing: the reshape is free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)`: the same bits, transformed alike."""
    shape = tuple(shape)
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def normals(key: jax.Array, shapes: Sequence[tuple[int, ...]], dtype=jnp.float32) -> list[jax.Array]:
    """Independent standard normal arrays of `shapes`, cut from one flat draw: one random-bits program however
    many arrays a step needs (each draw is its own program for XLA to compile)."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return [flat[a:b].reshape(shape) for a, b, shape in zip(offsets[:-1], offsets[1:], shapes)]

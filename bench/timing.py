"""Timing helpers shared by the benchmarks: best-of-N wall time, a matmul baseline, peak memory."""

import resource
import time

import jax
import jax.numpy as jnp


def best_time(fn, *args, repeats: int = 3) -> float:
    """Best of `repeats` wall times of fn(*args), after one warm-up call (compilation)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def alternating_rounds(forms: dict, rounds: int, first: dict | None = None) -> tuple[dict, dict]:
    """Wall times of each form (a callable) over `rounds` rounds in which the forms take turns, so that a slow
    spell of a busy machine hits all of them; each form's first call (compilation) is timed alone before, unless
    `first` already holds it. Returns (first-call seconds, per-round seconds) by name."""
    first = dict(first or {})
    for name, fn in forms.items():
        if name not in first:
            start = time.perf_counter()
            jax.block_until_ready(fn())
            first[name] = time.perf_counter() - start
    times = {name: [] for name in forms}
    for _ in range(rounds):
        for name, fn in forms.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return first, times


def matmul_flops_per_second(n: int = 4096) -> float:
    """FLOP/s of a float32 n^3 matmul: the same-run baseline that makes noisy CPU figures comparable."""
    a = jnp.ones((n, n), jnp.float32)
    return 2 * n**3 / best_time(jax.jit(lambda x: x @ x), a)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

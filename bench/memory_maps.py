"""Memory maps held by compiled XLA:CPU programs, against the kernel's per-process limit (vm.max_map_count).

    python bench/memory_maps.py [--programs 300]

Compiles --programs small jitted programs of distinct shapes in one process, as a long test worker does, and
prints the process's memory maps (/proc/self/maps) before, after compiling and after `jax.clear_caches()`, with
the maps per program and how many programs the limit allows. The baseline is the process with jax imported.
"""

import argparse
import gc
import pathlib

import jax
import jax.numpy as jnp


def maps() -> int:
    return len(pathlib.Path("/proc/self/maps").read_text().splitlines())


@jax.jit
def program(x: jax.Array) -> jax.Array:
    return jnp.tanh(x * 2.0 + 1.0).sum(0) + jnp.sin(x).mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", type=int, default=300, help="distinct programs to compile (default 300)")
    args = p.parse_args()
    limit = int(pathlib.Path("/proc/sys/vm/max_map_count").read_text())
    program(jnp.ones((8, 8))).block_until_ready()
    baseline = maps()
    for width in range(9, 9 + args.programs):
        program(jnp.ones((8, width))).block_until_ready()
    compiled = maps()
    jax.clear_caches()
    gc.collect()
    released = maps()
    per_program = (compiled - baseline) / args.programs
    print(f"jax {jax.__version__}, vm.max_map_count {limit}")
    print(f"baseline (one program): {baseline} maps")
    print(f"after {args.programs} more programs: {compiled} maps ({per_program:.1f} per program)")
    print(f"after jax.clear_caches(): {released} maps")
    print(f"programs that fit under the limit: about {int((limit - baseline) / per_program)}")


if __name__ == "__main__":
    main()

"""numpy's OpenBLAS threads when two processes share the cores, as the test suite's two workers do.

    python bench/blas_threads.py [--processes 2] [--samples 300]

Runs `frechet_distance` on two random sets of Inception-sized (2048) features in --processes concurrent
processes, with OPENBLAS_NUM_THREADS unset (OpenBLAS's default: one thread per core) and set to 1, and prints
each process's wall and CPU seconds; then one process alone both ways as the baseline.
"""

import argparse
import os
import subprocess
import sys
import time

CHILD = """
import time, numpy as np
from cdiff_jax.evaluation.frechet import frechet_distance
rng = np.random.default_rng(0)
stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (rng.normal(size=({n}, 2048)) + s for s in (0.0, 0.1))]
wall, cpu = time.perf_counter(), time.process_time()
frechet_distance(*stats[0], *stats[1])
print(f"{{time.perf_counter() - wall:.1f}} s wall, {{time.process_time() - cpu:.1f}} s CPU")
"""


def run(processes: int, threads: str | None, samples: int) -> list[str]:
    env = dict(os.environ)
    env.pop("OPENBLAS_NUM_THREADS", None)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = threads
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD.format(n=samples)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return [child.communicate()[0].strip() for child in children]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--samples", type=int, default=300)
    args = p.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for processes in (args.processes, 1):
        for threads in (None, "1"):
            start = time.perf_counter()
            results = run(processes, threads, args.samples)
            print(
                f"{processes} process(es), OPENBLAS_NUM_THREADS={threads or 'unset'}: {'; '.join(results)} "
                f"(all done in {time.perf_counter() - start:.1f} s)"
            )


if __name__ == "__main__":
    main()

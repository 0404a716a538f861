"""The toy StyleGAN2's training cost on this machine: seconds per iteration (G step + D step; every
16th also R1) at the demo's batch, seconds per thousand images, the projected time of the demo run, and
the cost of rendering the fresh toy faces it trains on.

    python bench/gan_train.py [--batch 32] [--iterations 6]

The same-run baseline is a float32 4096^3 matmul (bench/timing.py).
"""

import argparse
import time

import jax
import jax.numpy as jnp
from timing import matmul_flops_per_second

from cdiff_jax.config import load_config
from cdiff_jax.data.toy_faces import FreshToyFaces
from cdiff_jax.parallel import data_mesh
from cdiff_jax.train import stages
from cdiff_jax.train.config import TrainConfig

DEMO = "configs/train_demo.py:gan"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iterations", type=int, default=6)
    args = p.parse_args()
    cfg: TrainConfig = load_config(DEMO).replace(global_batch=args.batch, data_dir="fresh-toy-faces:1000")
    mesh = data_mesh()
    stage = stages.gan_stage(cfg, mesh)
    real = {"image": jnp.zeros((1, args.batch, 64, 64, 3), jnp.float32)}
    state = stage.state
    timings = {}
    for with_r1, name in ((True, "with R1"), (False, "plain")):
        step = 0 if with_r1 else 1
        state = state.replace(step=jnp.asarray(step, jnp.int32))
        start = time.perf_counter()
        state, _ = stage.run(state, real)
        jax.block_until_ready(state)
        compile_and_first = time.perf_counter() - start
        best = float("inf")
        for _ in range(args.iterations if not with_r1 else 2):
            state = state.replace(step=jnp.asarray(step, jnp.int32))
            start = time.perf_counter()
            state, _ = stage.run(state, real)
            jax.block_until_ready(state)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
        print(f"iteration {name}: {best:.2f} s (first call with compilation {compile_and_first:.0f} s)")
    per_iteration = (timings["with R1"] + (cfg.r1_interval - 1) * timings["plain"]) / cfg.r1_interval
    source = FreshToyFaces(1000)
    start = time.perf_counter()
    for i in range(64):
        source[i]
    render = (time.perf_counter() - start) / 64
    per_kimg = per_iteration * 1000 / args.batch
    print(
        f"batch {args.batch}: {per_iteration:.2f} s per iteration, {per_kimg:.0f} s per kimg; rendering a toy face "
        f"{render * 1e3:.1f} ms ({render * 1000:.0f} s per kimg on one core); the demo run "
        f"({cfg.steps} iterations, {cfg.steps * cfg.global_batch / 1000:.0f} kimg) projects to "
        f"{cfg.steps * per_iteration / 3600:.1f} h"
    )
    print(f"baseline: {matmul_flops_per_second() / 1e9:.0f} GFLOP/s float32 matmul")


if __name__ == "__main__":
    main()

"""Training throughput at the released 512 sizes (random weights), per stage.

    python bench/train_512.py --stage collab --batch 1
    python bench/train_512.py --stage collab --batch 4
    python bench/train_512.py --stage expert --batch 1

Times one optimizer step (compile reported separately), the FLOPs per example from XLA's cost
analysis, for `collab` the share of the step spent in the frozen parts (autoencoder encode and
both experts' forward passes, timed alone), and a float32 matmul baseline from the same run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import best_time, matmul_flops_per_second, peak_rss_gb

from cdiff_jax.config import load_config
from cdiff_jax.diffusion.denoiser import encode_conditions
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.optimization import adam, loop_policy
from cdiff_jax.system import init_system
from cdiff_jax.train.step import StepSettings, _train_steps, init_train_state, trainable_filter, trainable_prefixes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stage", choices=["collab", "expert"], default="collab")
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    baseline = matmul_flops_per_second()
    print(f"baseline: float32 4096^3 matmul {baseline / 1e9:.1f} GFLOP/s")
    spec = "released.py:512_codiff" if args.stage == "collab" else "released.py:512_text"
    system = init_system(load_config(spec), seed=0)
    cfg = system.cfg
    prefixes = trainable_prefixes(args.stage, cfg, None if args.stage == "collab" else "text")
    graphdef, params, frozen = nnx.split(system, trainable_filter(prefixes), ...)
    tx = adam(6.4e-5, weight_decay=0.01)
    state = init_train_state(params, tx)
    schedule = make_schedule(cfg.schedule)
    b, res = args.batch, cfg.autoencoder.resolution
    rng = np.random.default_rng(0)
    batches = {
        "image": jnp.asarray(rng.uniform(-1, 1, (1, b, res, res, 3)), jnp.float32),
        "mask": jnp.asarray(rng.integers(0, 2, (1, b, 19, 1024)), jnp.float32),
        "tokens": jnp.asarray(rng.integers(1000, 3000, (1, b, 77)), jnp.int32),
    }
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = _train_steps.lower(
        graphdef, frozen, state, batches, schedule, key, tx, StepSettings(), loop_policy()
    ).compile()
    compile_s = time.perf_counter() - start
    flops = compiled.cost_analysis()["flops"]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        state, metrics = compiled(frozen, state, batches, schedule, key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    step_s = min(times)
    print(
        f"{args.stage} step, batch {b}: {step_s:.2f} s/step, {b / step_s:.3f} examples/s, compile {compile_s:.1f}s, "
        f"{flops / b / 1e9:.0f} GFLOP/example, {flops / step_s / baseline:.2f}x the matmul rate, "
        f"peak RSS {peak_rss_gb():.1f} GB"
    )

    if args.stage == "collab":

        @jax.jit
        def frozen_forward(frozen, params, batch, key):
            system = nnx.merge(graphdef, params, frozen)
            z = system.autoencoder.encode_latent(batch["image"], jnp.zeros((b, 64, 64, 3)))
            contexts = encode_conditions(system, {"mask": batch["mask"], "text": batch["tokens"]})
            t = jnp.full((b,), 500)
            return [system.modalities[n].expert(z, t, contexts[n]) for n in ("mask", "text")]

        one = jax.tree.map(lambda x: x[0], batches)
        frozen_s = best_time(frozen_forward, frozen, state.params, one, key)
        print(
            f"frozen parts (autoencoder encode + both experts' forward): {frozen_s:.2f} s = "
            f"{frozen_s / step_s:.0%} of the step"
        )


if __name__ == "__main__":
    main()

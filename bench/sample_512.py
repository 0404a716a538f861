"""Speed and memory of collaborative sampling at the released 512 size (random weights).

    python bench/sample_512.py --batch 1 --steps 50          # one step, then a full sample
    python bench/sample_512.py --batch 4 --steps 50
    python bench/sample_512.py --batch 1 --steps 10 --what sample   # peak memory vs steps
    python bench/sample_512.py --batch 1 --steps 5 --what loop      # a step inside the loop vs alone
    python bench/sample_512.py --batch 1 --what decode              # the final latent -> 512x512 image
    python bench/sample_512.py --batch 1 --what parts               # each expert and diffuser alone
    python bench/sample_512.py --batch 1 --what fast --sampler dpmpp --steps 15   # against 50-step DDIM

Reports compile time separately from run time, the FLOPs of one collaborative step from XLA's
cost analysis, the achieved FLOP/s against a 4096^3 float32 matmul timed in the same run (the
baseline that makes figures comparable across noisy machines), and the process's peak RSS.
`--what fast` times a sample of --sampler at --steps against the released 50-step DDIM in the same
process (the ratio is the speed-up per image). `--what loop` isolates what a step costs inside the
compiled loop: samples of S and 2S steps give (T(2S) - T(S)) / S, free of encoding, decoding and
compilation, against the same step compiled alone, each timed as the mean of S calls in the same
process (means on both sides, so neither gets the best-of advantage).
Record the printed lines in BENCHMARKS.md with the command and machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import best_time, matmul_flops_per_second, peak_rss_gb

from cdiff_jax.config import load_config
from cdiff_jax.diffusion.collaboration import Reweighting
from cdiff_jax.diffusion.denoiser import encode_conditions, predict
from cdiff_jax.sampling import SamplerSettings, _sample_program
from cdiff_jax.system import init_system


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="released.py:512_codiff")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim", help="ddim, dpmpp or unipc (cdiff_jax.diffusion.solvers)")
    p.add_argument("--order", type=int, help="the solver's order (default: its own)")
    p.add_argument("--what", choices=["all", "step", "sample", "loop", "decode", "parts", "fast"], default="all")
    args = p.parse_args()

    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__}, "
        f"devices {jax.devices()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    baseline = matmul_flops_per_second()
    print(f"baseline: float32 4096^3 matmul {baseline / 1e9:.1f} GFLOP/s")

    start = time.perf_counter()
    system = init_system(load_config(args.config), seed=0)
    print(f"init: {time.perf_counter() - start:.1f}s, peak RSS {peak_rss_gb():.2f} GB")
    cfg = system.cfg
    graphdef, state = nnx.split(system)
    b, s = args.batch, cfg.latent_size
    rng = np.random.default_rng(0)
    conditions = {
        "mask": jnp.asarray(rng.integers(0, 2, (b, 19, 1024)).astype(np.float32)),
        "text": jnp.asarray(rng.integers(1000, 3000, (b, 77)).astype(np.int32)),
    }
    x = jnp.asarray(rng.normal(size=(b, s, s, cfg.autoencoder.embed_dim)).astype(np.float32))

    @jax.jit
    def step(state, contexts, x, t):
        return predict(nnx.merge(graphdef, state), x, t, contexts, Reweighting()).eps

    contexts = jax.jit(lambda st, c: encode_conditions(nnx.merge(graphdef, st), c))(state, conditions)
    t = jnp.full((b,), 501, jnp.int32)
    key = jax.random.key(0)

    def compiled_sample(steps, solver="ddim", order=None):
        settings = SamplerSettings(steps=steps, solver=solver, order=order)
        return _sample_program.lower(None, graphdef, state, conditions, {}, x, key, None, {}, {}, settings).compile()

    def timed_sample(steps, solver="ddim", order=None):
        """(seconds of one sample, seconds of compilation)."""
        start = time.perf_counter()
        compiled = compiled_sample(steps, solver, order)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(compiled(None, state, conditions, {}, x, key, None, {}, {}))
        return time.perf_counter() - start, compile_s

    if args.what in ("all", "step"):
        start = time.perf_counter()
        compiled = step.lower(state, contexts, x, t).compile()
        compile_s = time.perf_counter() - start
        flops = compiled.cost_analysis()["flops"]
        seconds = best_time(compiled, state, contexts, x, t)
        print(
            f"step: batch {b}: {seconds:.3f} s/step ({seconds / b:.3f} s per image-step), compile {compile_s:.1f}s, "
            f"{flops / 1e9:.1f} GFLOP/step, {flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / baseline:.2f}x "
            f"the matmul baseline, peak RSS {peak_rss_gb():.2f} GB"
        )

    if args.what in ("all", "sample"):
        seconds, compile_s = timed_sample(args.steps, args.sampler, args.order)
        print(
            f"sample: {args.sampler}, batch {b}, {args.steps} steps: {seconds:.1f}s ({seconds / b:.1f} s/image, "
            f"{seconds / args.steps:.3f} s/step), compile {compile_s:.1f}s, peak RSS {peak_rss_gb():.2f} GB"
        )

    if args.what == "fast":
        released, released_compile = timed_sample(50)
        fast, fast_compile = timed_sample(args.steps, args.sampler, args.order)
        print(
            f"fast: batch {b}: ddim 50 steps {released / b:.1f} s/image (compile {released_compile:.1f}s), "
            f"{args.sampler} {args.steps} steps {fast / b:.1f} s/image (compile {fast_compile:.1f}s): "
            f"{released / fast:.2f}x faster per image, peak RSS {peak_rss_gb():.2f} GB"
        )

    if args.what == "parts":
        for name in contexts:
            for part in ("expert", "diffuser"):
                run = jax.jit(
                    lambda state, x, t, c, name=name, part=part: getattr(
                        nnx.merge(graphdef, state).modalities[name], part
                    )(x, t, c)
                )
                compiled = run.lower(state, x, t, contexts[name]).compile()
                seconds = best_time(compiled, state, x, t, contexts[name])
                flops = compiled.cost_analysis()["flops"]
                print(
                    f"{name} {part}: {seconds:.3f} s, {flops / 1e9:.1f} GFLOP, "
                    f"{flops / seconds / baseline:.2f}x the matmul rate"
                )

    if args.what == "decode":
        decode = jax.jit(lambda state, z: nnx.merge(graphdef, state).autoencoder.decode(z)).lower(state, x).compile()
        seconds = best_time(decode, state, x, repeats=2)
        print(
            f"decode: batch {b}: {seconds:.2f} s ({seconds / b:.2f} s per image), "
            f"{decode.cost_analysis()['flops'] / 1e12:.2f} TFLOP, peak RSS {peak_rss_gb():.2f} GB"
        )

    if args.what == "loop":
        n = args.steps
        alone = step.lower(state, contexts, x, t).compile()
        jax.block_until_ready(alone(state, contexts, x, t))
        start = time.perf_counter()
        for _ in range(n):
            jax.block_until_ready(alone(state, contexts, x, t))
        alone_s = (time.perf_counter() - start) / n
        totals = {}
        for steps in (n, 2 * n):
            totals[steps], _ = timed_sample(steps)
        in_loop = (totals[2 * n] - totals[n]) / n
        print(
            f"loop: batch {b}: step alone {alone_s:.3f} s (mean of {n}), in the loop {in_loop:.3f} s "
            f"(samples of {n} and {2 * n} steps: {totals[n]:.1f} s, {totals[2 * n]:.1f} s) = "
            f"{in_loop / alone_s:.2f}x alone; the rest of a sample (encode, decode) {totals[n] - n * in_loop:.1f} s, "
            f"peak RSS {peak_rss_gb():.2f} GB"
        )


if __name__ == "__main__":
    main()

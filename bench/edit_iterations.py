"""Time per Imagic iteration (stage A: the embedding, stage B: the expert UNet), random weights.

    python bench/edit_iterations.py                            # the released 256 text expert
    python bench/edit_iterations.py --system demo_faces.py:text --chunk 10 --rolled

Each stage runs `--chunk` iterations per device call, unrolled (the CPU loop policy) and, with
--rolled, also as a rolled loop (the accelerator loop policy); one iteration per call (no loop at
all) is the baseline. Compile time is reported apart from the steady-state time per iteration.
"""

import argparse
import dataclasses
import os
import platform
import time

import jax
import jax.numpy as jnp
from flax import nnx
from timing import matmul_flops_per_second, peak_rss_gb

from cdiff_jax import conditions as cond
from cdiff_jax.config import load_config
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.editing.imagic import ImagicSettings, finetune_expert, optimise_embedding
from cdiff_jax.optimization import POLICY_ENV
from cdiff_jax.system import init_system

CAPTION = "This man has beard of medium length. He is in his thirties."


def time_stage(run, expert, schedule, z0, context, settings, chunks: int) -> tuple[float, float]:
    """(seconds of the first call, one chunk including compilation; seconds per iteration after it)."""
    iterations = lambda n: dataclasses.replace(settings, embedding_iterations=n, finetune_iterations=n)  # noqa: E731
    start = time.perf_counter()
    jax.block_until_ready(run(expert, schedule, z0, context, jax.random.key(0), iterations(settings.chunk))[1])
    first = time.perf_counter() - start
    timed = iterations(settings.chunk * chunks)
    start = time.perf_counter()
    jax.block_until_ready(run(expert, schedule, z0, context, jax.random.key(1), timed)[1])
    return first, (time.perf_counter() - start) / (settings.chunk * chunks)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", default="released.py:256_text", help="a system config with the modality")
    p.add_argument("--modality", default="text")
    p.add_argument("--chunk", type=int, default=2, help="iterations per device call")
    p.add_argument("--calls", type=int, default=2, help="timed calls per variant")
    p.add_argument("--rolled", action="store_true", help="also time the rolled loop (slow on CPU)")
    args = p.parse_args()

    cfg = load_config(args.system)
    system = init_system(cfg, seed=0)
    modality = system.modalities[args.modality]
    m_cfg = cfg.modalities[args.modality]
    condition = (
        cond.encode_captions([CAPTION], m_cfg.encoder).ids if m_cfg.kind == "text" else cond.null_condition(m_cfg)
    )  # all-zero one-hot: any mask costs the same
    context = modality.encoder(jnp.asarray(condition))
    z0 = jax.random.normal(jax.random.key(0), (1, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim))
    schedule = make_schedule(cfg.schedule)
    expert = modality.expert
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(expert, nnx.Param)))
    flops = matmul_flops_per_second()
    print(
        f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} CPU device(s), "
        f"jax {jax.__version__}"
    )
    print(
        f"{args.system} {args.modality} expert: {n_params / 1e6:.1f} M parameters, latent {z0.shape[1:]}, "
        f"context {context.shape[1:]}"
    )
    print(f"matmul baseline: {flops / 1e9:.0f} GFLOP/s")
    variants = [
        ("1 per call (no loop)", ImagicSettings(chunk=1), "cpu"),
        (f"{args.chunk} per call, unrolled scan", ImagicSettings(chunk=args.chunk), "cpu"),
    ]
    if args.rolled:
        variants.append((f"{args.chunk} per call, rolled scan", ImagicSettings(chunk=args.chunk), "accelerator"))
    for stage, run in (("A (embedding)", optimise_embedding), ("B (fine-tune)", finetune_expert)):
        baseline = None
        for name, settings, policy in variants:
            os.environ[POLICY_ENV] = policy
            first, per_iteration = time_stage(run, expert, schedule, z0, context, settings, args.calls)
            baseline = baseline or per_iteration
            print(
                f"stage {stage}, {name}: {per_iteration:.3f} s/iteration ({per_iteration / baseline:.2f}x), "
                f"first call {first:.1f} s",
                flush=True,
            )
    print(f"peak RSS {peak_rss_gb():.1f} GB")


if __name__ == "__main__":
    main()

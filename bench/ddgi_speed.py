"""DDGI's images against the diffusion model's own, per image, on the shipped demo models.

    python bench/ddgi_speed.py [--batch 4] [--rounds 7]

Times, in one process and on the same inputs (the example mask and caption, `--batch` samples): DDGI read at step
1, 10 and 50 of a 50-step DDIM sampler (`ddgi_sample`: the sampler's steps before the step read, the two experts
read there, the heads and the toy StyleGAN2), against the 50-step sampling with the autoencoder's decoder
(`sample`, what `sample.py` runs). Each form is called as a user calls it, so each call includes splitting the
modules into (graphdef, state) on the host, timed alone as a fifth form; every form is compiled before the clock
starts, then the forms take turns for --rounds rounds, so that a slow spell of a busy machine hits all of them.
Prints the best and median seconds per image, the ratios of the best times to the sampler's (as called, and with
the split taken off both sides), each round's ratios and their median, the load average around the run and the
same-run float32 4096^3 matmul baseline (bench/timing.py).
"""

import argparse
import os
import statistics

import jax
import numpy as np
from flax import nnx
from timing import alternating_rounds, matmul_flops_per_second

from cdiff_jax import requests
from cdiff_jax.checkpoint import load_gan, load_system
from cdiff_jax.ddgi.generate import ddgi_sample
from cdiff_jax.ddgi.heads import load_heads
from cdiff_jax.latents import latent_shape
from cdiff_jax.noise import normal
from cdiff_jax.sampling import SamplerSettings, sample

STEPS = 50
READ_AT = (1, 10, 50)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    load_before = os.getloadavg()
    system = load_system(requests.DEMO_CHECKPOINT)
    generator, heads = load_gan(requests.DEMO_GAN), load_heads(requests.DEMO_DDGI_HEADS)
    conditions, _ = requests.conditions(system.cfg, {"mask": str(requests.DEMO_MASK), "text": requests.DEMO_CAPTION})
    conditions = {name: np.repeat(c, args.batch, axis=0) for name, c in conditions.items()}
    key, init_key = jax.random.split(jax.random.key(0))
    x_T = normal(init_key, (args.batch,) + latent_shape(system.cfg))
    settings = SamplerSettings(steps=STEPS)
    experts = heads.cfg.experts

    def reading(at_step):
        return lambda: ddgi_sample(system, heads, generator, conditions, x_T, key, settings, at_step, experts).images

    forms = {f"DDGI read at step {k} of {STEPS}": reading(k) for k in READ_AT}
    sampler = f"{STEPS}-step DDIM sampling + decode"
    forms[sampler] = lambda: sample(*nnx.split(system), conditions, x_T, key, settings).images
    split = "nnx.split of the system, heads and G (inside each call above)"
    forms[split] = lambda: (nnx.split(system), nnx.split(heads), nnx.split(generator))

    first, times = alternating_rounds(forms, args.rounds)
    baseline = matmul_flops_per_second()
    load_after = os.getloadavg()

    per_image = {name: min(t) / args.batch for name, t in times.items()}
    print(
        f"batch {args.batch}, {args.rounds} rounds; {jax.devices()[0].platform}, {os.cpu_count()} cores; load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after; baseline {baseline / 1e9:.0f} GFLOP/s "
        "float32 matmul"
    )
    print(
        "| what | first call (compilation included) | s per image, best | median | against the sampler (best) "
        "| the same, split taken off both |"
    )
    print("|---|---|---|---|---|---|")
    for name, t in times.items():
        ratio = per_image[name] / per_image[sampler]
        bare = (per_image[name] - per_image[split]) / (per_image[sampler] - per_image[split])
        cells = (f"{ratio:.3f}x", f"{bare:.3f}x") if name != split else ("", "")
        print(
            f"| {name} | {first[name]:.1f} s | {per_image[name]:.4f} | {statistics.median(t) / args.batch:.4f} | "
            f"{cells[0]} | {cells[1]} |"
        )
    readings = [f"DDGI read at step {k} of {STEPS}" for k in READ_AT]
    print(
        "per round, against the sampler (as called): "
        + "; ".join(
            ", ".join(f"{times[name][r] / times[sampler][r]:.3f}" for name in readings) for r in range(args.rounds)
        )
        + f" (steps {', '.join(map(str, READ_AT))}); median per-round ratio "
        + ", ".join(f"{statistics.median(a / b for a, b in zip(times[name], times[sampler])):.3f}" for name in readings)
    )


if __name__ == "__main__":
    main()

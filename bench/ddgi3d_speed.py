"""DDGI-3D's cost per identity plus per view, against the diffusion model's own 50-step sample, on the demo system.

    python bench/ddgi3d_speed.py [--gan toy|ffhq512] [--batch 1] [--rounds 5] [--at-step 1]

Times, in one process and on the same inputs (the shipped demo system, the example mask and caption, `--batch`
samples): "per identity", DDGI-3D read at step --at-step of a 50-step DDIM sampler (`ddgi_sample`: the sampler's
steps before the step read, the two experts read there, the heads and EG3D's frontal view, as `sample.py ddgi`
calls it); the tri-planes of its W+ codes alone (`triplanes`); "per further view", one `render_views` of those
planes at yaw 0.3; and the 50-step sampling with the autoencoder's decoder (`sample`, what `sample.py` runs).
The generator is a fresh one, random weights (speed does not depend on them): --gan toy is configs/toy_eg3d.py,
what the demo DDGI-3D drives; --gan ffhq512 the released size (EG3DConfig(), neural rendering 128, as
bench/eg3d.py builds it; its 512x512 images do not match the demo system's 64x64, which `ddgi_sample` does not
need). The heads are fresh too, with the demo DDGI-3D stage's widths (configs/train_demo.py:ddgi3d_mapping) and
the generator's W+ size. Each form is compiled before the clock starts, then the forms take turns for --rounds
rounds. Prints the best and median seconds per sample, the ratios to the sampler, the derived cost of 5 views of
one identity, the load average around the run and the same-run float32 4096^3 matmul baseline (bench/timing.py).
"""

import argparse
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import alternating_rounds, matmul_flops_per_second

from cdiff_jax import requests
from cdiff_jax.cameras import orbit_cameras
from cdiff_jax.checkpoint import load_system
from cdiff_jax.config import EG3DConfig, load_config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.generate import ddgi_sample
from cdiff_jax.ddgi.heads import DDGIHeads
from cdiff_jax.latents import latent_shape
from cdiff_jax.nn.eg3d import TriPlaneGenerator, render_views, triplanes
from cdiff_jax.noise import normal
from cdiff_jax.sampling import SamplerSettings, sample

STEPS = 50
YAW = 0.3  # the further view's camera (radians), at the generator's average radius and pivot
VIEWS = 5  # the derived line: N views of one identity


def gan_config(name: str) -> EG3DConfig:
    if name == "toy":
        return load_config("toy_eg3d.py")
    return dataclasses.replace(EG3DConfig(), neural_rendering_resolution=128)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gan", choices=("toy", "ffhq512"), default="toy")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--at-step", type=int, default=1, help=f"the step DDGI reads, 1..{STEPS} (default 1)")
    args = p.parse_args()
    load_before = os.getloadavg()
    system = load_system(requests.DEMO_CHECKPOINT)
    gan_cfg = gan_config(args.gan)
    generator = TriPlaneGenerator(gan_cfg, rngs=nnx.Rngs(0))
    stage = load_config("train_demo.py:ddgi3d_mapping")
    heads = DDGIHeads(
        heads_config(
            system.cfg,
            gan_cfg,
            stage.ddgi_experts,
            mapping_channels=stage.ddgi_mapping_channels,
            modulation_channels=stage.ddgi_modulation_channels,
        ),
        rngs=nnx.Rngs(1),
    )
    conditions, _ = requests.conditions(system.cfg, {"mask": str(requests.DEMO_MASK), "text": requests.DEMO_CAPTION})
    conditions = {name: np.repeat(c, args.batch, axis=0) for name, c in conditions.items()}
    key, init_key = jax.random.split(jax.random.key(0))
    x_T = normal(init_key, (args.batch,) + latent_shape(system.cfg))
    settings = SamplerSettings(steps=STEPS)
    experts = heads.cfg.experts

    def identity():
        return ddgi_sample(system, heads, generator, conditions, x_T, key, settings, args.at_step, experts)

    per_identity = f"per identity: DDGI-3D read at step {args.at_step} of {STEPS} (codes + frontal view)"
    planes_only = "tri-planes of the codes alone (`triplanes`)"
    per_view = f"per further view: `render_views` of reused planes at yaw {YAW}"
    sampler = f"{STEPS}-step DDIM sampling + decode"
    split = "nnx.split of the system, heads and G (inside the per-identity call)"

    graphdef, state = nnx.split(generator)  # split once for every view, as `orbit_views` does
    first = {}  # compilation (and the first run) of each form, off the clock of the rounds
    start = time.perf_counter()
    ws = jax.block_until_ready(identity().ws)
    first[per_identity] = time.perf_counter() - start
    start = time.perf_counter()
    planes = jax.block_until_ready(triplanes(graphdef, state, ws))
    first[planes_only] = time.perf_counter() - start
    camera = orbit_cameras(
        [YAW], [0.0], radius=gan_cfg.avg_camera_radius, pivot=gan_cfg.avg_camera_pivot, fov_degrees=gan_cfg.fov_degrees
    )
    cameras = jnp.asarray(np.repeat(camera, args.batch, axis=0))
    view_key = jax.random.fold_in(key, 1)

    forms = {
        per_identity: lambda: identity().images,
        planes_only: lambda: triplanes(graphdef, state, ws),
        per_view: lambda: render_views(graphdef, state, planes, ws, cameras, key=view_key).image,
        sampler: lambda: sample(*nnx.split(system), conditions, x_T, key, settings).images,
        split: lambda: (nnx.split(system), nnx.split(heads), nnx.split(generator)),
    }

    first, times = alternating_rounds(forms, args.rounds, first)  # the codes and planes' first calls: above
    baseline = matmul_flops_per_second()
    load_after = os.getloadavg()

    best = {name: min(t) / args.batch for name, t in times.items()}
    print(
        f"--gan {args.gan} ({gan_cfg.img_resolution}x{gan_cfg.img_resolution}, neural rendering "
        f"{gan_cfg.neural_rendering_resolution}, {gan_cfg.depth_resolution}+{gan_cfg.depth_resolution_importance} "
        f"samples per ray, {gan_cfg.num_ws} W+ entries); batch {args.batch}, {args.rounds} rounds; "
        f"{jax.devices()[0].platform}, {os.cpu_count()} cores; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; baseline {baseline / 1e9:.0f} GFLOP/s float32 matmul"
    )
    print(
        "| what | first call (compilation included) | s per sample, best | median | against the sampler (best) "
        "| median per-round ratio |"
    )
    print("|---|---|---|---|---|---|")
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[sampler])]
        cells = (f"{best[name] / best[sampler]:.3f}x", f"{statistics.median(ratios):.3f}x")
        print(
            f"| {name} | {first[name]:.1f} s | {best[name]:.4f} | {statistics.median(t) / args.batch:.4f} | "
            f"{cells[0]} | {cells[1]} |"
        )
    ideal = best[per_identity] + (VIEWS - 1) * best[per_view]
    print(
        f"{VIEWS} views of one identity cost per-identity + {VIEWS - 1} x per-view = {ideal:.4f} s "
        f"({ideal / best[sampler]:.3f}x the sampler); with the tri-planes made again from the codes, as "
        f"`ddgi_sample` does not return its own: {ideal + best[planes_only]:.4f} s "
        f"({(ideal + best[planes_only]) / best[sampler]:.3f}x)"
    )


if __name__ == "__main__":
    main()

"""DDGI: faces from a mask and a caption through a StyleGAN2, read from the diffusion system at one step.

    python sample.py ddgi                  # the shipped demo system, toy GAN and heads, example mask and caption
    python sample.py ddgi --mask mask.png --text "This man has a long beard. He is in his sixties." --at-step 10
    python sample.py ddgi --at-step 1 --diffusion-image   # one UNet pass for DDGI, then the 50-step sample beside it
    python sample.py ddgi --yaw -0.35:0.35:3   # the shipped toy tri-plane generator and its heads: every view
    python sample.py ddgi --checkpoint SYSTEM --gan GAN_DIR --heads HEADS_DIR --mask mask.png --text "..."
    python sample.py ddgi --checkpoint SYSTEM --gan EG3D_DIR --heads HEADS_DIR ... --yaw -0.4:0.4:5 --pitch 0

--checkpoint is the diffusion system the heads were trained on (default: the shipped demo models, with the
shipped toy GAN and heads unless --gan and --heads are given; with --yaw and no --gan, the shipped toy tri-plane
generator and the heads trained for it). The sampler runs only up to the step DDGI reads
(--at-step k: k - 1 sampler steps, then the experts' read; step 1 reads the noise itself); --diffusion-image
also runs the remaining steps to the diffusion model's own sample I^d_0. --out gets the GAN images (images/),
with --diffusion-image the I^d_0 samples (diffusion/), a grid, the W+ codes (ws.npy) and settings.json; it is
written beside --out and renamed into place when complete. With an EG3D --gan, DDGI's faces are also rendered
from every (--yaw, --pitch) pair (radians; views/ and depth/, one row of views and one of depth maps per sample in
views.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np
from flax import nnx

from cdiff_jax import requests, viz
from cdiff_jax.checkpoint import NotACheckpointError, atomic_directory, load_gan, load_system
from cdiff_jax.commands.sample_gan3d import (
    attach_angle_values,
    parse_views,
    render_views,
    view_cameras,
    view_labels,
    write_views,
)
from cdiff_jax.ddgi.features import check_ddgi_parts
from cdiff_jax.ddgi.gan import is_3d
from cdiff_jax.ddgi.generate import ddgi_sample
from cdiff_jax.ddgi.heads import load_heads
from cdiff_jax.latents import latent_shape
from cdiff_jax.noise import normal
from cdiff_jax.paths import CannotWrite, writing
from cdiff_jax.requests import UsageError
from cdiff_jax.sampling import SamplerSettings

SETTINGS_FILE = "settings.json"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sample.py ddgi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="the diffusion system the heads read (default: the shipped demo models)")
    p.add_argument(
        "--gan",
        help="the generator checkpoint the heads were trained for (default with the demo models: the shipped toy GAN, "
        "or with --yaw the shipped toy tri-plane generator)",
    )
    p.add_argument(
        "--heads",
        help="trained DDGI heads, a ddgi stage's WORKDIR/heads (default with the demo models: the shipped toy heads "
        "for that generator)",
    )
    p.add_argument("--mask", help="face-parsing mask PNG (default with the demo models: the example mask)")
    p.add_argument("--text", help="caption (default with the demo models: the example caption)")
    p.add_argument("--at-step", type=int, help="the sampler step DDGI reads, 1..--steps (default the last)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument(
        "--diffusion-image",
        action="store_true",
        help="also sample the diffusion model's own image "
        "I^d_0 (the remaining steps after --at-step, and the autoencoder's decoder) and write it beside "
        "DDGI's (default: the sampler stops at --at-step)",
    )
    p.add_argument("--batch", type=int, default=4, help=f"samples, 1..{requests.MAX_BATCH} (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--yaw", help="with an EG3D --gan: yaw angles of the views, radians (a,b or start:stop:count)")
    p.add_argument("--pitch", default="0", help="with an EG3D --gan: pitch angles of the views (default 0)")
    p.add_argument("--out", default="outputs/ddgi", help="output folder (default outputs/ddgi)")
    return p.parse_args(attach_angle_values(list(argv)))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = requests.output_folder(args.out, lambda path: (path / SETTINGS_FILE).is_file())
        requests.batch(args.batch)
        checkpoint = args.checkpoint or str(requests.DEMO_CHECKPOINT)
        wanted = {name: value for name, value in (("mask", args.mask), ("text", args.text)) if value is not None}
        if args.checkpoint is None:
            wanted = {"mask": args.mask or str(requests.DEMO_MASK), "text": args.text or requests.DEMO_CAPTION}
        # The demo's views come from its tri-plane generator and the heads trained for it.
        demo_3d = args.checkpoint is None and args.gan is None and args.yaw is not None
        demo_gan, demo_heads = (
            (requests.DEMO_TRIPLANE, requests.DEMO_DDGI3D_HEADS)
            if demo_3d
            else (requests.DEMO_GAN, requests.DEMO_DDGI_HEADS)
        )
        gan = args.gan or (str(demo_gan) if args.checkpoint is None else None)
        heads_dir = args.heads or (str(demo_heads) if args.checkpoint is None else None)
        if gan is None or heads_dir is None:
            raise UsageError(
                "give --gan and --heads with --checkpoint: the GAN and the DDGI heads trained on that system's features"
            )
        cfg = requests.checkpoint_config(checkpoint)
        requests.steps(args.steps, cfg.schedule.timesteps)
        at_step = args.steps if args.at_step is None else args.at_step
        if not 1 <= at_step <= args.steps:
            raise UsageError(
                f"--at-step {at_step}: give 1..{args.steps}, the step of the {args.steps}-step sampler "
                "whose x_t DDGI reads (1 is pure noise)"
            )
        conditions, _ = requests.conditions(cfg, wanted)
        generator, heads = load_gan(gan), load_heads(heads_dir)
        views = parse_views(args.yaw, args.pitch) if args.yaw is not None else []
        if views and not is_3d(generator):
            raise UsageError(f"--yaw: {gan} is a 2D StyleGAN2 generator; views need an EG3D --gan")
        cameras = view_cameras(generator.cfg, views) if views else None
        try:
            check_ddgi_parts(cfg, generator.cfg, heads.cfg)
        except ValueError as err:
            raise UsageError(f"--gan {gan} and --heads {heads_dir}: {err}") from None
        experts = heads.cfg.experts
        if sorted(experts) != sorted(conditions):
            raise UsageError(
                f"the heads read the {' and '.join(experts)} experts: give {', '.join('--' + name for name in experts)}"
            )
    except (UsageError, NotACheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        system = load_system(checkpoint)
    except NotACheckpointError as err:  # damaged weights, found when they are read
        print(f"error: {err}", file=sys.stderr)
        return 1
    conditions = {name: np.repeat(c, args.batch, axis=0) for name, c in conditions.items()}
    key, init_key = jax.random.split(jax.random.key(args.seed))
    x_T = normal(init_key, (args.batch,) + latent_shape(cfg))
    start = time.perf_counter()
    result = ddgi_sample(
        system,
        heads,
        generator,
        conditions,
        x_T,
        key,
        SamplerSettings(steps=args.steps),
        at_step,
        experts,
        diffusion_images=args.diffusion_image,
    )
    gan_images = viz.to_uint8(np.asarray(result.images))
    diffusion = viz.to_uint8(np.asarray(result.diffusion_images)) if args.diffusion_image else None
    if views:
        view_images, depths = render_views(*nnx.split(generator), result.ws, cameras, jax.random.fold_in(key, 1))
    seconds = time.perf_counter() - start
    settings = {
        "checkpoint": checkpoint,
        "gan": gan,
        "heads": heads_dir,
        **wanted,
        "at_step": at_step,
        "diffusion_image": args.diffusion_image,
        "views": [{"yaw": yaw, "pitch": pitch} for pitch, yaw in views],
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "seconds": round(seconds, 2),
    }
    try:
        with writing(out), atomic_directory(out) as tmp:
            tmp.mkdir()
            if views:
                write_views(tmp, view_images, depths, view_labels(views), generator.cfg)
            for i, gan_image in enumerate(gan_images):
                viz.save_png(tmp / "images" / f"{i:03d}.png", gan_image)
                if diffusion is not None:
                    viz.save_png(tmp / "diffusion" / f"{i:03d}.png", diffusion[i])
            label = f"DDGI at step {at_step}"
            grid = (
                viz.grid(np.stack([diffusion, gan_images], axis=1), col_labels=["diffusion I_0", label])
                if diffusion is not None
                else viz.grid(gan_images[:, None], col_labels=[label])
            )
            viz.save_png(tmp / "grid.png", grid)
            np.save(tmp / "ws.npy", np.asarray(result.ws))
            (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    except CannotWrite as err:  # a full disk: --out is as it was
        print(f"error: {err}", file=sys.stderr)
        return 1
    beside = " and the diffusion model's own" if args.diffusion_image else ""
    print(f"wrote {args.batch} DDGI samples{beside} to {out} ({seconds:.1f}s including compilation)")
    return 0

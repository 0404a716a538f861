"""Sample a StyleGAN2 generator: `python sample.py gan --checkpoint DIR [--count 8] [--seed 0] [--truncation 0.7]`.

DIR is a generator checkpoint (`cdiff convert G.pkl DIR`, or a gan training run's WORKDIR/generator); without
--checkpoint, the shipped toy GAN (64x64 toy faces, DDGI's demo GAN). --out
gets one PNG per sample, a grid, the W+ codes (ws.npy, [count, num_ws, w_dim]) and settings.json; it is
written beside --out and renamed into place when complete.
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
from cdiff_jax.checkpoint import NotACheckpointError, atomic_directory, load_generator
from cdiff_jax.nn.stylegan2 import NOISE_MODES, map_latents, synthesize
from cdiff_jax.noise import normal
from cdiff_jax.paths import CannotWrite, writing
from cdiff_jax.requests import UsageError

SETTINGS_FILE = "settings.json"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sample.py gan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint",
        default=str(requests.DEMO_GAN),
        help="a generator checkpoint directory (default: the shipped toy GAN)",
    )
    p.add_argument("--count", type=int, default=8, help=f"samples, 1..{requests.MAX_BATCH} (default 8)")
    p.add_argument("--seed", type=int, default=0, help="z of sample i is drawn from the seed (default 0)")
    p.add_argument("--truncation", type=float, default=1.0, help="psi: 1 none, 0 the average face (default 1)")
    p.add_argument("--truncation-cutoff", type=int, help="truncate only the first N rows of W+ (default all)")
    p.add_argument("--noise", choices=NOISE_MODES, default="const", help="per-layer noise (default const)")
    p.add_argument("--out", default="outputs/gan", help="output folder (default outputs/gan)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if not 1 <= args.count <= requests.MAX_BATCH:
            raise UsageError(
                f"--count {args.count}: give 1..{requests.MAX_BATCH} samples per run; for more, run "
                "again with other --seed values"
            )
        out = requests.output_folder(args.out, lambda path: (path / SETTINGS_FILE).is_file())
        generator = load_generator(args.checkpoint)
        cfg = generator.cfg
        if args.truncation_cutoff is not None and not 1 <= args.truncation_cutoff <= cfg.num_ws:
            raise UsageError(f"--truncation-cutoff {args.truncation_cutoff}: this generator has {cfg.num_ws} W+ rows")
        if cfg.c_dim:
            raise UsageError(
                f"{args.checkpoint} is a conditional generator (c_dim {cfg.c_dim}); this command samples "
                "unconditional ones"
            )
    except (UsageError, NotACheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    graphdef, state = nnx.split(generator)
    z_key, noise_key = jax.random.split(jax.random.key(args.seed))
    start = time.perf_counter()
    ws = map_latents(
        graphdef,
        state,
        normal(z_key, (args.count, cfg.z_dim)),
        truncation_psi=args.truncation,
        truncation_cutoff=args.truncation_cutoff,
    )
    images = viz.to_uint8(np.asarray(synthesize(graphdef, state, ws, noise_mode=args.noise, key=noise_key)))
    seconds = time.perf_counter() - start
    settings = {
        "checkpoint": args.checkpoint,
        "count": args.count,
        "seed": args.seed,
        "truncation": args.truncation,
        "truncation_cutoff": args.truncation_cutoff,
        "noise": args.noise,
        "seconds": round(seconds, 2),
    }
    try:
        with writing(out), atomic_directory(out) as tmp:
            tmp.mkdir()
            for i, image in enumerate(images):
                viz.save_png(tmp / "images" / f"{i:03d}.png", image)
            viz.save_png(tmp / "grid.png", viz.grid(images))
            np.save(tmp / "ws.npy", np.asarray(ws))
            (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    except CannotWrite as err:  # a full disk: --out is as it was
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.count} samples to {out} ({seconds:.1f}s including compilation)")
    return 0

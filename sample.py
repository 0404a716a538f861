"""Sample faces from a face-parsing mask, a caption, or both (collaborative diffusion).

    python sample.py --checkpoint checkpoints/512_codiff --mask mask.png --text "This man has a beard."
    python sample.py --checkpoint checkpoints/512_codiff --text "He is in his forties."   # text expert alone
    python sample.py                       # the shipped demo models (64x64 toy faces), example mask and caption
    python sample.py edit --image face.png --text "..." --mask edited.png --out runs/edit   # see --help

Convert released weights first with `python -m cdiff_jax.convert SRC DST`. Everything a run
writes goes into --out: one PNG per sample, a grid, the mask overlay, on request the influence
maps and the x_t / pred_x0 trajectories as grids, and settings.json with every input.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

from cdiff_jax import conditions as cond
from cdiff_jax.checkpoint import NotACheckpointError, load_system
from cdiff_jax.checkpoint import load_config as load_checkpoint_config
from cdiff_jax.data.masks import colorize, load_label_map
from cdiff_jax.diffusion.collaboration import MODES, rule_for_mode
from cdiff_jax.diffusion.ddim import ddim_timesteps
from cdiff_jax.parallel import data_mesh, replicate, shard_batch
from cdiff_jax.sampling import SamplerSettings, print_progress, progress_listener, sample
from cdiff_jax import viz
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parent
DEMO_CHECKPOINT = REPO / "cdiff_jax" / "demo_models" / "collab"
DEFAULT_MASK = REPO / "cdiff_jax" / "data" / "examples" / "face_mask.png"  # a held-out toy face's label map
DEFAULT_CAPTION = "This man has beard of medium length. He is in his thirties."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a cdiff_jax checkpoint directory (default: the shipped demo models)")
    p.add_argument("--mask", help="face-parsing mask: label PNG (ids 0..18) or RGB PNG in CelebAMask-HQ colours")
    p.add_argument("--text", help="caption, e.g. 'This man has beard of medium length. He is in his thirties.'")
    p.add_argument("--batch", type=int, default=4, help="samples per run (default 4, as the released scripts)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (default 1.0, as the released scripts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", default="1", help="classifier-free guidance: one scale for all, or mask=2,text=3")
    p.add_argument("--mode", choices=MODES, default="released",
                   help="collaboration: released (cosine decay of the mask weight, then x mask-scale), "
                        "plain (the softmax of training), linear (linear decay, then x mask-scale), "
                        "equal (fixed 1/M weights, Composable Diffusion's rule, the diffusers unused)")
    p.add_argument("--mask-scale", type=float, default=2.0, help="mask weight boost of the released modes")
    p.add_argument("--save-influence", action="store_true", help="write influence-map heatmaps of the steps")
    p.add_argument("--save-trajectory", action="store_true", help="write decoded x_t and pred_x0 of the steps")
    p.add_argument("--columns", type=int, default=10, help="steps shown in trajectory grids (evenly spaced)")
    p.add_argument("--out", default="outputs/sample", help="output directory")
    return p.parse_args(argv)


class UsageError(ValueError):
    pass


def _parse_guidance(text: str, names: list[str]) -> dict[str, float]:
    try:
        if "=" not in text:
            return {name: float(text) for name in names}
        scales = {name: 1.0 for name in names}
        for part in text.split(","):
            name, value = part.split("=")
            if name.strip() not in scales:
                raise UsageError(f"--guidance names {name.strip()!r}, which is not a condition of this run ({names})")
            scales[name.strip()] = float(value)
        return scales
    except ValueError as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"--guidance {text!r}: give one number or name=value pairs like mask=2,text=3") from None


def prepare(args):
    """Validate every input, then load the system and build the conditions; writes nothing.

    The cheap checks come first so that a bad mask or caption fails before gigabytes of
    weights are read.
    """
    if args.checkpoint:
        mask, text = args.mask, args.text
        if mask is None and text is None:
            raise UsageError("give --mask, --text or both")
    else:
        print(f"note: no --checkpoint: sampling the shipped demo models ({DEMO_CHECKPOINT.relative_to(REPO)}, "
              "trained on 64x64 toy faces)")
        args.checkpoint = str(DEMO_CHECKPOINT)
        args.save_influence = True  # the demo is there to be looked at
        mask = args.mask or str(DEFAULT_MASK)
        text = args.text if args.text is not None else DEFAULT_CAPTION
    cfg = load_checkpoint_config(args.checkpoint)
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    requested = {"mask": mask, "text": text}
    conditions, truncated = {}, False
    for name, value in requested.items():
        if value is None:
            continue
        if name not in cfg.modalities:
            raise UsageError(f"the checkpoint has no {name} modality (it has {sorted(cfg.modalities)}); drop --{name}")
        modality = cfg.modalities[name]
        if modality.kind == "text":
            if not value.strip():
                raise UsageError("--text is empty; give a caption or leave out --text")
            tokens = cond.encode_captions([value], modality.encoder)
            truncated = bool(tokens.truncated[0])
            conditions[name] = np.repeat(tokens.ids, args.batch, axis=0)
        else:
            if not pathlib.Path(value).is_file():
                raise UsageError(f"--mask {value}: no such file")
            conditions[name] = np.repeat(cond.encode_masks([value], modality.encoder), args.batch, axis=0)
    if len(conditions) > 1 and not all(cfg.modalities[n].diffuser for n in conditions):
        raise UsageError("collaborative sampling needs a checkpoint with dynamic diffusers (a codiff checkpoint)")
    if truncated:
        print(f"note: the caption is longer than {cfg.modalities['text'].encoder.max_len} tokens and was truncated")
    scales = _parse_guidance(args.guidance, list(conditions))
    guided = tuple(n for n, s in scales.items() if s != 1.0)
    reweighting = rule_for_mode(args.mode, list(conditions), args.mask_scale, cfg.schedule.timesteps)
    settings = SamplerSettings(steps=args.steps, eta=args.eta, reweighting=reweighting, guided=guided,
                               record=args.save_influence or args.save_trajectory, progress=True)
    ddim_timesteps(cfg.schedule.timesteps, args.steps)  # reject unusable step counts before any work
    nulls = {n: cond.null_condition(cfg.modalities[n]) for n in guided}
    system = load_system(args.checkpoint)
    return system, conditions, settings, {n: scales[n] for n in guided}, nulls, {"mask": mask, "text": text}


def run(args) -> int:
    try:
        system, conditions, settings, scales, nulls, inputs = prepare(args)
    except (UsageError, ValueError, FileNotFoundError, NotACheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = system.cfg
    latent = (args.batch, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)
    key, init_key = jax.random.split(jax.random.key(args.seed))
    x_T = jax.random.normal(init_key, latent)
    graphdef, state = nnx.split(system)
    if args.batch % jax.device_count() == 0 and jax.device_count() > 1:
        mesh = data_mesh()
        state, conditions, x_T = replicate(state, mesh), shard_batch(conditions, mesh), shard_batch(x_T, mesh)
    start = time.perf_counter()
    with progress_listener(print_progress()):
        result = sample(graphdef, state, conditions, x_T, key, settings,
                        guidance_scales=scales or None, null_conditions=nulls or None)
        images = np.asarray(result.images)
    seconds = time.perf_counter() - start
    out = pathlib.Path(args.out)
    write_outputs(out, system, list(conditions), result, images, inputs, args, seconds)
    print(f"wrote {len(images)} samples to {out} ({seconds:.1f}s including compilation)")
    return 0


def write_outputs(out, system, names, result, images, inputs, args, seconds):
    pictures = viz.to_uint8(images)
    for i, picture in enumerate(pictures):
        viz.save_png(out / "images" / f"{i:03d}.png", picture)
    viz.save_png(out / "grid.png", viz.grid(pictures))
    if inputs["mask"] is not None and "mask" in system.cfg.modalities:
        labels = load_label_map(inputs["mask"])
        viz.save_png(out / "mask.png", colorize(labels))
        viz.save_png(out / "overlay_grid.png", viz.grid(viz.overlay(pictures, labels, alpha=0.3)))
    trajectory = result.trajectory
    if trajectory is not None:
        steps = trajectory.timesteps.shape[0]
        shown = np.unique(np.linspace(0, steps - 1, min(args.columns, steps)).round().astype(int))
        labels = [f"t={int(trajectory.timesteps[i])}" for i in shown]
        if args.save_influence and trajectory.logits is not None:
            for m, name in enumerate(names):
                maps = np.asarray(trajectory.weights[shown, m, ..., 0])  # [steps, B, h, w]
                tiles = viz.heatmap(np.repeat(np.repeat(maps, 4, axis=-1), 4, axis=-2)).swapaxes(0, 1)
                viz.save_png(out / f"influence_{name}.png", viz.grid(tiles, col_labels=labels))
        if args.save_trajectory:
            decode = jax.jit(system.autoencoder.decode_latent)
            for field in ("x_t", "pred_x0"):
                latents = np.asarray(getattr(trajectory, field))[shown]  # [steps, B, h, w, c]
                decoded = np.stack([np.asarray(decode(z)) for z in latents])
                viz.save_png(out / f"{field}.png", viz.grid(viz.to_uint8(decoded).swapaxes(0, 1), col_labels=labels))
    record = {
        "checkpoint": args.checkpoint,
        "mask": inputs["mask"], "text": inputs["text"], "batch": args.batch, "seed": args.seed,
        "steps": args.steps, "eta": args.eta, "mode": args.mode, "mask_scale": args.mask_scale,
        "guidance": args.guidance, "devices": jax.device_count(), "seconds": round(seconds, 2),
    }
    tmp = out / ".settings.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out / "settings.json")


if __name__ == "__main__":
    if sys.argv[1:2] == ["edit"]:  # editing a real face: Imagic per modality, then collaboration
        from cdiff_jax.editing.run import main as edit_main

        sys.exit(edit_main(sys.argv[2:]))
    sys.exit(run(parse_args()))

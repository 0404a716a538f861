"""Sample faces from a face-parsing mask, a caption, or both (collaborative diffusion).

    python sample.py --checkpoint checkpoints/512_codiff --mask mask.png --text "This man has a beard."
    python sample.py --checkpoint checkpoints/512_codiff --text "He is in his forties."   # text expert alone
    python sample.py                       # the shipped demo models (64x64 toy faces), example mask and caption
    python sample.py --steps 10            # as good as 50 steps on the demo models (README, Fast sampling)
    python sample.py --sampler dpmpp2m --steps 10   # DPM-Solver++: 50-step deterministic DDIM's images in 10
    python sample.py edit --image face.png --text "..." --mask edited.png --out runs/edit   # see --help
    python sample.py gan --checkpoint checkpoints/stylegan2_ffhq --truncation 0.7           # see --help
    python sample.py gan3d --checkpoint checkpoints/eg3d_ffhq512 --yaw -0.4:0.4:5          # see --help
    python sample.py ddgi --mask mask.png --text "..."      # DDGI with the shipped toy GAN and heads; see --help

Convert released weights first with `python -m cdiff_jax.convert SRC DST`. Everything a run
writes goes into --out: one PNG per sample, a grid, the mask overlay, on request the influence
maps and the x_t / pred_x0 trajectories as grids, and settings.json with every input. The folder
is written beside --out and renamed into place when complete; a previous run's --out is replaced,
and kept when the write fails (a full disk: one line, exit status 1).
For more samples than --batch allows, run again with other --seed values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import numpy as np
from flax import nnx

from cdiff_jax import conditions as cond
from cdiff_jax import latents, requests, viz
from cdiff_jax.checkpoint import NotACheckpointError, atomic_directory, load_system
from cdiff_jax.data.masks import colorize, load_label_map
from cdiff_jax.diffusion.collaboration import MODES, rule_for_mode
from cdiff_jax.noise import normal
from cdiff_jax.parallel import data_mesh, replicate, shard_batch
from cdiff_jax.paths import CannotWrite, writing
from cdiff_jax.progress import SamplingBar, configure_logging, log
from cdiff_jax.requests import UsageError
from cdiff_jax.sampling import NonFiniteSamples, SampleResult, SamplerSettings, require_finite, sample

THUMBNAIL = 64  # the largest mask thumbnail in a grid's header, pixels
SETTINGS_FILE = "settings.json"  # also what marks a folder as a previous run's, which may be replaced


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="a cdiff_jax checkpoint directory (default: the shipped demo models)")
    p.add_argument("--mask", help="face-parsing mask: label PNG (ids 0..18) or RGB PNG in CelebAMask-HQ colours")
    p.add_argument("--text", help="caption, e.g. 'This man has beard of medium length. He is in his thirties.'")
    p.add_argument("--scribble", help="strokes PNG, white on black, for a checkpoint with a scribble modality")
    p.add_argument(
        "--batch",
        type=int,
        default=4,
        help=f"samples per run, 1..{requests.MAX_BATCH} (default 4, as the released scripts)",
    )
    p.add_argument(
        "--sampler",
        default="ddim",
        help=f"{', '.join(requests.SAMPLER_NAMES)} (default ddim, as the released scripts; dpmpp2m and "
        "unipc reach deterministic DDIM's images in 5-10 steps: README, Fast sampling)",
    )
    p.add_argument("--order", type=int, help="the solver's order (default: ddim 1, dpmpp 2, unipc 2)")
    p.add_argument("--spacing", help="timesteps: leading (the released DDIM's) or linspace (default: the solver's)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (default 1.0, as the released scripts)")
    p.add_argument("--freeu", help="FreeU on the experts: b1,b2,s1,s2 (the official FreeU scripts: 1.1,1.2,1,1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", default="1", help="classifier-free guidance: one scale for all, or mask=2,text=3")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="released",
        help="collaboration: released (cosine decay of the mask weight, then x mask-scale), "
        "plain (the softmax of training), linear (linear decay, then x mask-scale), "
        "equal (fixed 1/M weights, Composable Diffusion's rule, the diffusers unused)",
    )
    p.add_argument("--mask-scale", type=float, default=2.0, help="mask weight boost of the released modes")
    p.add_argument("--save-influence", action="store_true", help="write influence-map heatmaps of the steps")
    p.add_argument("--save-trajectory", action="store_true", help="write decoded x_t and pred_x0 of the steps")
    p.add_argument(
        "--save-z",
        action="store_true",
        help="write the sampled latents z_0: latents.npy [B, h, w, c] and latents.png (a row per sample)",
    )
    p.add_argument("--columns", type=int, default=10, help="steps shown in trajectory grids (evenly spaced)")
    p.add_argument("--out", default="outputs/sample", help="output folder (replaced if a previous run's)")
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What a run samples, every input validated; the demo's defaults already filled in."""

    checkpoint: str
    inputs: dict  # modality -> caption or mask path, as given
    conditions: dict  # modality -> encoded condition, batch of one
    truncated: tuple[str, ...]  # captions longer than the encoder's context
    batch: int
    seed: int
    settings: SamplerSettings
    guidance: dict  # guided modality -> scale
    guidance_text: str
    mode: str
    mask_scale: float
    save_influence: bool
    save_trajectory: bool
    save_z: bool
    columns: int
    out: pathlib.Path


def validate(args: argparse.Namespace) -> SampleRequest:
    """Every check of the run, cheapest first; loads no weights and writes nothing."""
    out = requests.output_folder(args.out, is_ours=lambda p: (p / SETTINGS_FILE).is_file())
    demo = args.checkpoint is None
    if demo:
        checkpoint = str(requests.DEMO_CHECKPOINT)
        wanted = {
            "mask": args.mask or str(requests.DEMO_MASK),
            "text": args.text if args.text is not None else requests.DEMO_CAPTION,
            **({"scribble": args.scribble} if args.scribble is not None else {}),
        }
    else:
        checkpoint = args.checkpoint
        wanted = {
            name: value
            for name, value in (("mask", args.mask), ("text", args.text), ("scribble", args.scribble))
            if value is not None
        }
    requests.batch(args.batch)
    sampler = requests.sampler(args.sampler, args.order, args.spacing, args.eta)
    freeu = requests.freeu(args.freeu)
    requests.mask_scale(args.mask_scale)
    requests.columns(args.columns)
    requests.mode(args.mode)
    cfg = requests.checkpoint_config(checkpoint)
    requests.steps(args.steps, cfg.schedule.timesteps, sampler["solver"], sampler["spacing"])
    conditions, truncated = requests.conditions(cfg, wanted)
    scales = requests.guidance(args.guidance, list(conditions))
    guided = tuple(n for n, s in scales.items() if s != 1.0)
    save_influence = args.save_influence or demo  # the demo is there to be looked at
    settings = SamplerSettings(
        steps=args.steps,
        **sampler,
        freeu=freeu,
        guided=guided,
        record=save_influence or args.save_trajectory,
        reweighting=rule_for_mode(args.mode, list(conditions), args.mask_scale, cfg.schedule.timesteps),
    )
    return SampleRequest(
        checkpoint,
        wanted,
        conditions,
        tuple(truncated),
        args.batch,
        args.seed,
        settings,
        {n: scales[n] for n in guided},
        args.guidance,
        args.mode,
        args.mask_scale,
        save_influence,
        args.save_trajectory,
        args.save_z,
        args.columns,
        out,
    )


def run(request: SampleRequest) -> float:
    """Load the system, sample, and write the run's folder (into place only when complete); returns
    the seconds sampling took, compilation included."""
    system = load_system(request.checkpoint)
    with SamplingBar() as bar:
        result, seconds = generate(system, request, on_step=bar)
    with writing(request.out), atomic_directory(request.out) as tmp:
        write_outputs(tmp, system, request, result, seconds)
    return seconds


def generate(system, request: SampleRequest, on_step=None) -> tuple[SampleResult, float]:
    """Sample the request with a loaded system (the page keeps one in memory, so its program compiles once);
    returns the finite result and the seconds it took, compilation included. `on_step(done, total)`: progress."""
    cfg = system.cfg
    conditions = {n: np.repeat(c, request.batch, axis=0) for n, c in request.conditions.items()}
    nulls = {n: cond.null_condition(cfg.modalities[n]) for n in request.guidance}
    key, init_key = jax.random.split(jax.random.key(request.seed))
    x_T = normal(init_key, (request.batch,) + latents.latent_shape(cfg))
    graphdef, state = nnx.split(system)
    if request.batch % jax.device_count() == 0 and jax.device_count() > 1:
        mesh = data_mesh()
        state, conditions, x_T = replicate(state, mesh), shard_batch(conditions, mesh), shard_batch(x_T, mesh)
    start = time.perf_counter()
    result = sample(
        graphdef,
        state,
        conditions,
        x_T,
        key,
        request.settings,
        on_step=on_step,
        guidance_scales=request.guidance or None,
        null_conditions=nulls or None,
    )
    require_finite(result.latents)
    return result, time.perf_counter() - start


def write_outputs(out: pathlib.Path, system, request: SampleRequest, result, seconds: float) -> None:
    pictures = viz.to_uint8(np.asarray(result.images))
    for i, picture in enumerate(pictures):
        viz.save_png(out / "images" / f"{i:03d}.png", picture)
    labels = load_label_map(request.inputs["mask"]) if "mask" in request.conditions else None
    thumbnail = None if labels is None else viz.mask_picture(labels, min(pictures.shape[1], THUMBNAIL))
    viz.save_png(out / "grid.png", viz.titled(viz.grid(pictures), describe(request), thumbnail=thumbnail))
    if labels is not None:
        viz.save_png(out / "mask.png", colorize(labels))
        viz.save_png(out / "overlay_grid.png", viz.grid(viz.overlay(pictures, labels, alpha=0.3)))
    if request.save_z:
        z = np.asarray(result.latents, np.float32)
        np.save(out / "latents.npy", z)
        viz.save_png(out / "latents.png", latent_picture(z))
    trajectory = result.trajectory
    if trajectory is not None:
        steps = trajectory.timesteps.shape[0]
        shown = np.unique(np.linspace(0, steps - 1, min(request.columns, steps)).round().astype(int))
        labels = [f"t={int(trajectory.timesteps[i])}" for i in shown]
        if request.save_influence and trajectory.logits is not None:
            for m, name in enumerate(request.conditions):
                maps = np.asarray(trajectory.weights[shown, m, ..., 0])  # [steps, B, h, w]
                viz.save_png(out / f"influence_{name}.png", viz.influence_picture(pictures, maps, labels, name))
        if request.save_trajectory:
            autoencoder = nnx.split(system.autoencoder)
            for field in ("x_t", "pred_x0"):
                steps_latents = np.asarray(getattr(trajectory, field))[shown]  # [steps, B, h, w, c]
                decoded = np.stack([np.asarray(latents.decode_latent(*autoencoder, z)) for z in steps_latents])
                viz.save_png(out / f"{field}.png", viz.grid(viz.to_uint8(decoded).swapaxes(0, 1), col_labels=labels))
    record = {
        "checkpoint": request.checkpoint,
        "mask": request.inputs.get("mask"),
        "text": request.inputs.get("text"),
        "scribble": request.inputs.get("scribble"),
        "batch": request.batch,
        "seed": request.seed,
        "sampler": request.settings.solver,
        "order": request.settings.order,
        "spacing": request.settings.spacing,
        "steps": request.settings.steps,
        "eta": request.settings.eta,
        "freeu": None if request.settings.freeu is None else dataclasses.asdict(request.settings.freeu),
        "mode": request.mode,
        "mask_scale": request.mask_scale,
        "guidance": request.guidance_text,
        "devices": jax.device_count(),
        "seconds": round(seconds, 2),
    }
    (out / SETTINGS_FILE).write_text(json.dumps(record, indent=2))


def describe(request: SampleRequest) -> str:
    """The run in one line, for the grid's header: the conditions (a mask is shown as its thumbnail) and sampler."""
    given = [
        f'{n}: "{v}"' if n == "text" else f"{n}: {pathlib.Path(v).name}"
        for n, v in request.inputs.items()
        if n in request.conditions
    ]
    s = request.settings
    return f"{'; '.join(given)} | {request.mode} weights, {s.solver} {s.steps} steps, seed {request.seed}"


def latent_picture(z: np.ndarray) -> np.ndarray:
    """Latents [B, h, w, c] as a labelled grid: a row per sample, a column per channel, each channel
    stretched to its sample's range and enlarged to 64 pixels."""
    low = z.min(axis=(1, 2, 3), keepdims=True)
    high = z.max(axis=(1, 2, 3), keepdims=True)
    gray = (z - low) / np.maximum(high - low, 1e-12)
    scale = max(1, 64 // z.shape[1])
    tiles = np.repeat(np.repeat(gray, scale, axis=1), scale, axis=2)  # [B, H, W, c]
    tiles = np.repeat(np.moveaxis(tiles, -1, 1)[..., None], 3, axis=-1)  # [B, c, H, W, 3]
    return viz.grid(np.round(tiles * 255).astype(np.uint8), col_labels=[f"z[{c}]" for c in range(z.shape[-1])])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    configure_logging()
    if argv[:1] == ["edit"]:  # editing a real face: Imagic per modality, then collaboration
        from cdiff_jax.editing.run import main as edit_main

        return edit_main(argv[1:])
    if argv[:1] == ["gan"]:  # a StyleGAN2 generator (DDGI's GAN)
        from cdiff_jax.commands.sample_gan import main as gan_main

        return gan_main(argv[1:])
    if argv[:1] == ["gan3d"]:  # an EG3D generator, rendered from several views
        from cdiff_jax.commands.sample_gan3d import main as gan3d_main

        return gan3d_main(argv[1:])
    if argv[:1] == ["ddgi"]:  # diffusion features -> W+ -> StyleGAN2
        from cdiff_jax.commands.sample_ddgi import main as ddgi_main

        return ddgi_main(argv[1:])
    args = parse_args(argv)
    try:
        request = validate(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        defaulted = [what for what, given in (("example mask", args.mask), ("example caption", args.text)) if not given]
        log.info(
            "no --checkpoint: sampling the shipped demo models (64x64 toy faces)%s",
            f" with their {' and '.join(defaulted)}" if defaulted else "",
        )
    for name in request.truncated:
        log.warning(
            "note: the --%s caption is longer than the text encoder's %d tokens and was truncated",
            name,
            request.conditions[name].shape[-1],
        )
    try:
        seconds = run(request)
    except (NonFiniteSamples, NotACheckpointError, CannotWrite) as err:  # broken weights, a full disk
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {request.batch} samples to {request.out} ({seconds:.1f}s including compilation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

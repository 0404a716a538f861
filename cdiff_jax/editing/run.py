"""Editing a real face by caption, mask or both: Imagic per modality, then an alpha sweep, in one directory.

    python sample.py edit --image face.png --text "This man has a long beard. He is in his sixties." --out runs/edit
    python sample.py edit --checkpoint ckpt/256_codiff --image face.png --mask edited.png --text "..." --out runs/edit

With one condition the edit is that expert's Imagic (stage A, stage B, then sampling); with both,
the fine-tuned experts replace the originals inside the collaborative model and the dynamic
diffusers weigh them, as the paper's collaborative editing. What --out holds:

    edit.json                    what identifies the edit: checkpoint, image and targets (by content), seed, stages
    input.png, reconstruction.png
    <modality>/embeddings/       stage A: the target and the optimised context (orbax)
    <modality>/expert/           stage B: the fine-tuned expert's parameters (orbax)
    <modality>/losses_<stage>.json
    sweeps/<tag>/sweep.png       one column per alpha (per-alpha PNGs and sweep.json beside it)

Each stage's result is renamed into place when the stage ends, so a rerun with the same inputs
reuses every finished stage (a run killed in stage B restarts stage B, not A), and other alphas,
steps, eta or mode only sample again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax import latents, requests, viz
from cdiff_jax.checkpoint import NotACheckpointError, load_arrays, load_system, save_arrays
from cdiff_jax.diffusion.collaboration import MODES, rule_for_mode
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.editing.imagic import ImagicSettings, finetune_expert, optimise_embedding
from cdiff_jax.editing.sweep import alpha_sweep
from cdiff_jax.noise import normal
from cdiff_jax.paths import CannotWrite, writing
from cdiff_jax.progress import SamplingBar, bar, configure_logging, log
from cdiff_jax.requests import UsageError
from cdiff_jax.sampling import NonFiniteSamples, SamplerSettings, require_finite

# The collaborative editing script's sweep.
DEFAULT_ALPHAS = "0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1,1.125,1.25,1.375,1.5,1.625,1.75,1.875,2,2.5"

# The edit's random streams, each folded out of the seed's key by its own number, so that a stage's
# numbers do not depend on which other stages ran (a resumed edit draws what an uninterrupted one did)
# and adding a modality does not change the others' draws.
POSTERIOR_STREAM = 0  # the input image's latent, drawn once
MODALITY_STREAMS = 1  # modality i's stages draw from stream MODALITY_STREAMS + i ...
STAGE_A_STREAM, STAGE_B_STREAM = 0, 1  # ... folded again: stage A, stage B
START_NOISE_STREAM = 1000  # the sweep's x_T; far above any modality's stream
STEP_NOISE_STREAM = 1001  # the sweep's per-step noise


@dataclasses.dataclass(frozen=True)
class EditRequest:
    checkpoint: str
    image: str
    targets: dict  # modality -> caption (text) or label-map path (mask), in the order given
    seed: int = 0
    imagic: ImagicSettings = ImagicSettings()


@dataclasses.dataclass(frozen=True)
class SweepRequest:
    alphas: dict  # modality -> tuple of floats, equal lengths
    steps: int = 50
    eta: float = 1.0  # DDIM's; 0 for the deterministic solvers
    mode: str = "released"
    mask_scale: float = 2.0
    batch: int = 1
    solver: str = "ddim"
    order: int | None = None


def edit(request: EditRequest, sweep: SweepRequest, out: str | pathlib.Path) -> pathlib.Path:
    """Run (or resume) the edit in `out` and write the sweep; returns the sweep's directory."""
    cfg, image, conditions = validate(request, sweep)
    out = requests.output_folder(out, is_ours=lambda p: (p / "edit.json").is_file())
    _claim(out, edit_identity(request, cfg))
    system = load_system(request.checkpoint)
    schedule = make_schedule(cfg.schedule)
    key = jax.random.key(request.seed)
    autoencoder = nnx.split(system.autoencoder)
    latent = latents.latent_shape(cfg, *image.shape[1:3])
    # The reference edits a posterior sample of the image's latent, drawn once.
    z0 = latents.encode_latent(
        *autoencoder, image, normal(jax.random.fold_in(key, POSTERIOR_STREAM), (1,) + latent, image.dtype)
    )
    viz.save_png(out / "input.png", viz.to_uint8(np.asarray(image[0])))
    viz.save_png(out / "reconstruction.png", viz.to_uint8(np.asarray(latents.decode_latent(*autoencoder, z0)[0])))

    targets, optimised = {}, {}
    for index, (name, condition) in enumerate(conditions.items()):
        modality = system.modalities[name]
        stage_key = jax.random.fold_in(key, MODALITY_STREAMS + index)
        targets[name], optimised[name] = _stage_a(
            out / name, modality, condition, schedule, z0, jax.random.fold_in(stage_key, STAGE_A_STREAM), request.imagic
        )
        tuned = _stage_b(
            out / name,
            modality.expert,
            schedule,
            z0,
            optimised[name],
            jax.random.fold_in(stage_key, STAGE_B_STREAM),
            request.imagic,
        )
        nnx.update(modality.expert, tuned)

    rule = rule_for_mode(sweep.mode, list(targets), sweep.mask_scale, cfg.schedule.timesteps)
    settings = SamplerSettings(
        steps=sweep.steps, eta=sweep.eta, solver=sweep.solver, order=sweep.order, reweighting=rule
    )
    x_T = normal(jax.random.fold_in(key, START_NOISE_STREAM), (sweep.batch,) + latent)
    log.info("sampling %d alphas x %d ...", len(next(iter(sweep.alphas.values()))), sweep.batch)
    with SamplingBar("sweep") as progress:
        images = alpha_sweep(
            system,
            targets,
            optimised,
            {n: np.asarray(sweep.alphas[n]) for n in targets},
            x_T,
            jax.random.fold_in(key, STEP_NOISE_STREAM),
            settings,
            on_step=progress,
        )
    require_finite(images.reshape((-1,) + images.shape[2:]))
    return _write_sweep(out, request, sweep, viz.to_uint8(images))


def validate(request: EditRequest, sweep: SweepRequest):
    """Check every input before anything is loaded or written; returns the system config, the image
    [1, H, W, 3] and the encoded target condition of each modality (token ids or a one-hot mask)."""
    if not request.targets:
        raise UsageError("give the edit's target: --text, --mask or both")
    cfg = requests.checkpoint_config(request.checkpoint)
    conditions, _ = requests.conditions(cfg, request.targets)
    lengths = {n: len(sweep.alphas.get(n, ())) for n in request.targets}
    if len(set(lengths.values())) != 1 or not min(lengths.values()):
        raise UsageError(f"every edited modality needs the same, non-zero number of alphas; got {lengths}")
    if not all(math.isfinite(a) for n in request.targets for a in sweep.alphas[n]):
        raise UsageError("--alphas must be finite numbers")
    requests.mode(sweep.mode)
    requests.batch(sweep.batch)
    requests.sampler(sweep.solver, sweep.order, None, sweep.eta if sweep.solver == "ddim" else None)
    requests.mask_scale(sweep.mask_scale)
    requests.steps(sweep.steps, cfg.schedule.timesteps, sweep.solver)
    for stage in ("embedding", "finetune"):
        if getattr(request.imagic, f"{stage}_iterations") < 0:
            raise UsageError(f"--{stage}-iterations must not be negative")
        if not math.isfinite(getattr(request.imagic, f"{stage}_lr")):
            raise UsageError(f"--{stage}-lr must be a finite number")
    if request.imagic.chunk is not None and request.imagic.chunk < 1:
        raise UsageError("--chunk must be at least 1")
    image = requests.image(request.image, requests.size_multiple(cfg, request.targets))
    return cfg, jnp.asarray(image), conditions


def edit_identity(request: EditRequest, cfg) -> dict:
    """What the stored stages depend on; files are identified by their content, not their names."""
    targets = {
        name: {"caption": target} if cfg.modalities[name].kind == "text" else {"mask_sha256": _sha256(target)}
        for name, target in request.targets.items()
    }
    return {
        "checkpoint": str(pathlib.Path(request.checkpoint).resolve()),
        "image_sha256": _sha256(request.image),
        "targets": targets,
        "seed": request.seed,
        "imagic": {k: v for k, v in dataclasses.asdict(request.imagic).items() if k != "chunk"},
    }


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _claim(out: pathlib.Path, identity: dict) -> None:
    """Make `out` (absent, empty or an edit's, see `requests.output_folder`) this edit's directory,
    refusing one that holds a different edit."""
    manifest = out / "edit.json"
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        differs = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        if differs:
            raise UsageError(
                f"{out} holds another edit (it differs in {', '.join(differs)}); "
                "choose a new --out, or give the same inputs to resume it"
            )
        log.info("resuming the edit in %s", out)
        return
    _write_json(manifest, identity)


def _stage_a(directory, modality, condition, schedule, z0, key, settings):
    """(target context, optimised context) [1, L, D], from disk when stage A has finished before."""
    e_target = modality.encoder(jnp.asarray(condition))
    stored = directory / "embeddings"
    if stored.exists():
        log.info("%s: stage A done before, reusing %s", directory.name, stored)
        saved = load_arrays(stored, {"target": e_target, "optimised": e_target})
        return saved["target"], saved["optimised"]
    with bar(settings.embedding_iterations, f"{directory.name} stage A (embedding)") as progress:
        e_optimised, losses = optimise_embedding(
            modality.expert, schedule, z0, e_target, key, settings, _report(progress)
        )
    _write_json(directory / "losses_embedding.json", losses.tolist())
    save_arrays(stored, {"target": e_target, "optimised": e_optimised})
    return e_target, e_optimised


def _stage_b(directory, expert, schedule, z0, context, key, settings) -> nnx.State:
    """The fine-tuned expert parameters, from disk when stage B has finished before."""
    stored = directory / "expert"
    if stored.exists():
        log.info("%s: stage B done before, reusing %s", directory.name, stored)
        state = nnx.state(expert)
        nnx.replace_by_pure_dict(state, load_arrays(stored, nnx.to_pure_dict(state)))
        return state
    with bar(settings.finetune_iterations, f"{directory.name} stage B (fine-tuning)") as progress:
        tuned, losses = finetune_expert(expert, schedule, z0, context, key, settings, _report(progress))
    _write_json(directory / "losses_finetune.json", losses.tolist())
    save_arrays(stored, nnx.to_pure_dict(tuned))
    return tuned


def _report(progress):
    def report(done: int, total: int, loss: float) -> None:
        progress.set_postfix(loss=f"{loss:.4g}", refresh=False)
        progress.update(done - progress.n)

    return report


def _write_sweep(out, request, sweep, images) -> pathlib.Path:
    """The sweep as a grid (rows: samples, columns: alphas) and one PNG per alpha and sample."""
    record = {
        "alphas": {n: list(map(float, a)) for n, a in sweep.alphas.items() if n in request.targets},
        **{k: v for k, v in dataclasses.asdict(sweep).items() if k != "alphas"},
    }
    tag = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:8]
    directory = out / "sweeps" / f"seed{request.seed}-{tag}"
    names = list(record["alphas"])
    labels = [_alpha_label({n: record["alphas"][n][k] for n in names}) for k in range(len(images))]
    for k, column in enumerate(images):
        for i, picture in enumerate(column):
            viz.save_png(directory / f"alpha{k:02d}_sample{i}.png", picture)
    viz.save_png(directory / "sweep.png", viz.grid(images.swapaxes(0, 1), col_labels=labels))
    _write_json(directory / "sweep.json", {"modalities": names, **record})
    return directory


def _alpha_label(alphas: dict) -> str:
    """ "a=0.5" when every modality has the same alpha, else "mask 1 text 0.5"."""
    if len(set(alphas.values())) == 1:
        return f"a={next(iter(alphas.values())):g}"
    return " ".join(f"{n} {a:g}" for n, a in alphas.items())


def _write_json(path: pathlib.Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def parse_alphas(values: list[str], names: list[str]) -> dict:
    """`--alphas 0,0.5,1` for every modality, or `--alphas text:0,1,2 --alphas mask:0,0.5,1` one each."""
    alphas = {}
    for value in values or [DEFAULT_ALPHAS]:
        name, _, numbers = value.rpartition(":")
        try:
            parsed = tuple(float(x) for x in numbers.split(","))
        except ValueError:
            raise UsageError(f"--alphas {value!r}: give numbers like 0,0.5,1 or text:0,0.5,1") from None
        for target in [name] if name else names:
            alphas[target] = parsed
    for name in names:
        if name not in alphas:
            raise UsageError(f"--alphas gives no alphas for {name}; add --alphas {name}:0,0.5,1")
    return alphas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="sample.py edit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", default=str(requests.DEMO_CHECKPOINT), help="our checkpoint (default: the demo models)"
    )
    p.add_argument("--image", required=True, help="the face to edit (PNG/JPEG, sides a multiple of the model's)")
    p.add_argument("--text", help="target caption")
    p.add_argument("--mask", help="target face-parsing mask (label PNG or CelebAMask-HQ colours)")
    p.add_argument("--out", required=True, help="the edit's directory (created; reused to resume)")
    p.add_argument("--seed", type=int, default=0)
    defaults = ImagicSettings()
    p.add_argument("--embedding-iterations", type=int, default=defaults.embedding_iterations, help="stage A")
    p.add_argument("--embedding-lr", type=float, default=defaults.embedding_lr)
    p.add_argument("--finetune-iterations", type=int, default=defaults.finetune_iterations, help="stage B")
    p.add_argument("--finetune-lr", type=float, default=defaults.finetune_lr)
    p.add_argument(
        "--chunk",
        type=int,
        default=defaults.chunk,
        help="iterations per compiled call (default: the backend's loop policy)",
    )
    p.add_argument("--alphas", action="append", help=f"interpolation weights (default {DEFAULT_ALPHAS})")
    p.add_argument("--sampler", default="ddim", help=f"the sweep's sampler: {', '.join(requests.SAMPLER_NAMES)}")
    p.add_argument("--order", type=int, help="the solver's order (default: its own)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps of the sweep")
    p.add_argument("--eta", type=float, help="DDIM eta (default 1.0)")
    p.add_argument("--mode", choices=MODES, default="released", help="collaboration rule (as sample.py)")
    p.add_argument("--mask-scale", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=1, help="samples per alpha")
    args = p.parse_args(argv)
    configure_logging()
    targets = {name: value for name, value in (("mask", args.mask), ("text", args.text)) if value is not None}
    try:
        request = EditRequest(
            args.checkpoint,
            args.image,
            targets,
            args.seed,
            ImagicSettings(
                embedding_lr=args.embedding_lr,
                embedding_iterations=args.embedding_iterations,
                finetune_lr=args.finetune_lr,
                finetune_iterations=args.finetune_iterations,
                chunk=args.chunk,
            ),
        )
        sampler = requests.sampler(args.sampler, args.order, None, args.eta)
        sweep = SweepRequest(
            parse_alphas(args.alphas, list(targets)),
            args.steps,
            sampler["eta"],
            args.mode,
            args.mask_scale,
            args.batch,
            sampler["solver"],
            sampler["order"],
        )
        with writing(args.out, "the finished stages are kept (free space, then run again to resume)", reads_too=True):
            directory = edit(request, sweep, args.out)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteSamples, NotACheckpointError, CannotWrite) as err:  # broken weights, a full disk
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote the sweep over alpha ({', '.join(targets)}) to {directory / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image, UnidentifiedImageError

from cdiff_jax import conditions as cond
from cdiff_jax import viz
from cdiff_jax.checkpoint import NotACheckpointError, load_arrays, load_config, load_system, save_arrays
from cdiff_jax.diffusion.collaboration import MODES, rule_for_mode
from cdiff_jax.diffusion.ddim import ddim_timesteps
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.editing.imagic import ImagicSettings, finetune_expert, optimise_embedding
from cdiff_jax.editing.sweep import alpha_sweep
from cdiff_jax.sampling import SamplerSettings
from cdiff_jax.train.metrics import ProgressLine

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = PACKAGE / "demo_models" / "collab"
# The collaborative editing script's sweep.
DEFAULT_ALPHAS = "0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1,1.125,1.25,1.375,1.5,1.625,1.75,1.875,2,2.5"


class UsageError(ValueError):
    pass


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
    eta: float = 1.0
    mode: str = "released"
    mask_scale: float = 2.0
    batch: int = 1


def edit(request: EditRequest, sweep: SweepRequest, out: str | pathlib.Path) -> pathlib.Path:
    """Run (or resume) the edit in `out` and write the sweep; returns the sweep's directory."""
    out = pathlib.Path(out)
    cfg, image, conditions = validate(request, sweep)
    _claim(out, edit_identity(request, cfg))
    system = load_system(request.checkpoint)
    schedule = make_schedule(cfg.schedule)
    key = jax.random.key(request.seed)
    autoencoder = nnx.split(system.autoencoder)
    # The reference edits a posterior sample of the image's latent, drawn once.
    z0 = _encode_latent(*autoencoder, image, jax.random.normal(jax.random.fold_in(key, 0),
                                                               (1,) + _latent_shape(cfg, image), image.dtype))
    viz.save_png(out / "input.png", viz.to_uint8(np.asarray(image[0])))
    viz.save_png(out / "reconstruction.png", viz.to_uint8(np.asarray(_decode_latent(*autoencoder, z0)[0])))

    targets, optimised = {}, {}
    for index, (name, condition) in enumerate(conditions.items()):
        modality = system.modalities[name]
        stage_key = jax.random.fold_in(key, index + 1)
        targets[name], optimised[name] = _stage_a(out / name, modality, condition, schedule, z0,
                                                   jax.random.fold_in(stage_key, 0), request.imagic)
        tuned = _stage_b(out / name, modality.expert, schedule, z0, optimised[name],
                         jax.random.fold_in(stage_key, 1), request.imagic)
        nnx.update(modality.expert, tuned)

    settings = SamplerSettings(steps=sweep.steps, eta=sweep.eta, reweighting=rule_for_mode(
        sweep.mode, list(targets), sweep.mask_scale, cfg.schedule.timesteps))
    x_T = jax.random.normal(jax.random.fold_in(key, 1000), (sweep.batch,) + _latent_shape(cfg, image))
    print(f"sampling {len(next(iter(sweep.alphas.values())))} alphas x {sweep.batch} ...", flush=True)
    images = alpha_sweep(system, targets, optimised, {n: np.asarray(sweep.alphas[n]) for n in targets}, x_T,
                         jax.random.fold_in(key, 1001), settings)
    return _write_sweep(out, request, sweep, viz.to_uint8(images))


@jax.jit(static_argnames=("graphdef",))
def _encode_latent(graphdef, state, image, noise):
    return nnx.merge(graphdef, state).encode_latent(image, noise)


@jax.jit(static_argnames=("graphdef",))
def _decode_latent(graphdef, state, z):
    return nnx.merge(graphdef, state).decode_latent(z)


def validate(request: EditRequest, sweep: SweepRequest):
    """Check every input before anything is loaded or written; returns the system config, the image
    [1, H, W, 3] and the encoded target condition of each modality (token ids or a one-hot mask)."""
    if not request.targets:
        raise UsageError("give the edit's target: --text, --mask or both")
    try:
        cfg = load_config(request.checkpoint)
    except NotACheckpointError as err:
        raise UsageError(str(err)) from None
    conditions = {}
    for name, target in request.targets.items():
        if name not in cfg.modalities:
            raise UsageError(f"the checkpoint has no {name} modality (it has {sorted(cfg.modalities)}); drop --{name}")
        modality = cfg.modalities[name]
        if modality.kind == "text":
            if not target.strip():
                raise UsageError("--text is empty; give the target caption or leave out --text")
            conditions[name] = cond.encode_captions([target], modality.encoder).ids
        else:
            try:
                conditions[name] = cond.encode_masks([target], modality.encoder)
            except (FileNotFoundError, ValueError) as err:
                raise UsageError(f"--mask: {err}") from None
    if len(request.targets) > 1 and not all(cfg.modalities[n].diffuser for n in request.targets):
        raise UsageError("editing with two conditions needs a collaborative checkpoint (with dynamic diffusers)")
    lengths = {n: len(sweep.alphas.get(n, ())) for n in request.targets}
    if len(set(lengths.values())) != 1 or not min(lengths.values()):
        raise UsageError(f"every edited modality needs the same, non-zero number of alphas; got {lengths}")
    if sweep.mode not in MODES:
        raise UsageError(f"--mode {sweep.mode!r}: expected one of {MODES}")
    if sweep.batch < 1:
        raise UsageError("--batch must be at least 1")
    for stage in ("embedding", "finetune"):
        if getattr(request.imagic, f"{stage}_iterations") < 0:
            raise UsageError(f"--{stage}-iterations must not be negative")
    if request.imagic.chunk is not None and request.imagic.chunk < 1:
        raise UsageError("--chunk must be at least 1")
    try:
        ddim_timesteps(cfg.schedule.timesteps, sweep.steps)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return cfg, load_image(request.image, _size_multiple(cfg, request.targets)), conditions


def load_image(path: str, multiple: int) -> jax.Array:
    """The input face as [1, H, W, 3] in [-1, 1], unresized like the reference; H and W must be
    multiples of what the autoencoder and the UNets divide by."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"--image {path}: no such file")
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"--image {path} is not a readable image ({err})") from None
    h, w = pixels.shape[:2]
    if h % multiple or w % multiple:
        raise UsageError(f"--image {path} is {w}x{h}; this model needs sides that are multiples of {multiple} "
                         f"(crop or resize it, e.g. to {max(multiple, h - h % multiple)} pixels square)")
    return jnp.asarray(pixels[None] / 127.5 - 1.0)


def _size_multiple(cfg, names) -> int:
    unets = [u for n in names for u in (cfg.modalities[n].expert, cfg.modalities[n].diffuser) if u is not None]
    return cfg.autoencoder.downsample_factor * max(2 ** (len(u.channel_mult) - 1) for u in unets)


def _latent_shape(cfg, image) -> tuple[int, int, int]:
    f = cfg.autoencoder.downsample_factor
    return image.shape[1] // f, image.shape[2] // f, cfg.autoencoder.embed_dim


def edit_identity(request: EditRequest, cfg) -> dict:
    """What the stored stages depend on; files are identified by their content, not their names."""
    targets = {name: {"caption": target} if cfg.modalities[name].kind == "text" else {"mask_sha256": _sha256(target)}
               for name, target in request.targets.items()}
    return {"checkpoint": str(pathlib.Path(request.checkpoint).resolve()), "image_sha256": _sha256(request.image),
            "targets": targets, "seed": request.seed,
            "imagic": {k: v for k, v in dataclasses.asdict(request.imagic).items() if k != "chunk"}}


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _claim(out: pathlib.Path, identity: dict) -> None:
    """Make `out` this edit's directory, refusing one that holds a different edit."""
    manifest = out / "edit.json"
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        differs = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        if differs:
            raise UsageError(f"{out} holds another edit (it differs in {', '.join(differs)}); "
                             "choose a new --out, or give the same inputs to resume it")
        print(f"resuming the edit in {out}")
        return
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not an edit directory; choose a new --out")
    _write_json(manifest, identity)


def _stage_a(directory, modality, condition, schedule, z0, key, settings):
    """(target context, optimised context) [1, L, D], from disk when stage A has finished before."""
    e_target = modality.encoder(jnp.asarray(condition))
    stored = directory / "embeddings"
    if stored.exists():
        print(f"{directory.name}: stage A done before, reusing {stored}")
        saved = load_arrays(stored, {"target": e_target, "optimised": e_target})
        return saved["target"], saved["optimised"]
    progress = ProgressLine(settings.embedding_iterations)
    e_optimised, losses = optimise_embedding(modality.expert, schedule, z0, e_target, key, settings,
                                             _report(progress, f"{directory.name} stage A"))
    _write_json(directory / "losses_embedding.json", losses.tolist())
    save_arrays(stored, {"target": e_target, "optimised": e_optimised})
    return e_target, e_optimised


def _stage_b(directory, expert, schedule, z0, context, key, settings) -> nnx.State:
    """The fine-tuned expert parameters, from disk when stage B has finished before."""
    stored = directory / "expert"
    if stored.exists():
        print(f"{directory.name}: stage B done before, reusing {stored}")
        state = nnx.state(expert)
        nnx.replace_by_pure_dict(state, load_arrays(stored, nnx.to_pure_dict(state)))
        return state
    progress = ProgressLine(settings.finetune_iterations)
    tuned, losses = finetune_expert(expert, schedule, z0, context, key, settings,
                                    _report(progress, f"{directory.name} stage B"))
    _write_json(directory / "losses_finetune.json", losses.tolist())
    save_arrays(stored, nnx.to_pure_dict(tuned))
    return tuned


def _report(progress: ProgressLine, label: str):
    def report(done: int, total: int, loss: float) -> None:
        progress.update(done, {f"{label} loss": loss})

    return report


def _write_sweep(out, request, sweep, images) -> pathlib.Path:
    """The sweep as a grid (rows: samples, columns: alphas) and one PNG per alpha and sample."""
    record = {"alphas": {n: list(map(float, a)) for n, a in sweep.alphas.items() if n in request.targets},
              **{k: v for k, v in dataclasses.asdict(sweep).items() if k != "alphas"}}
    tag = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:8]
    directory = out / "sweeps" / f"seed{request.seed}-{tag}"
    names = list(record["alphas"])
    labels = [_alpha_label({n: record["alphas"][n][k] for n in names}) for k in range(len(images))]
    for k, column in enumerate(images):
        for i, picture in enumerate(column):
            viz.save_png(directory / f"alpha{k:02d}_sample{i}.png", picture)
    viz.save_png(directory / "sweep.png", viz.grid(images.swapaxes(0, 1), col_labels=labels))
    _write_json(directory / "sweep.json", {"modalities": names, **record})
    print(f"wrote the sweep over alpha ({', '.join(names)}) to {directory / 'sweep.png'}")
    return directory


def _alpha_label(alphas: dict) -> str:
    """"a=0.5" when every modality has the same alpha, else "mask 1 text 0.5"."""
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
        for target in ([name] if name else names):
            alphas[target] = parsed
    for name in names:
        if name not in alphas:
            raise UsageError(f"--alphas gives no alphas for {name}; add --alphas {name}:0,0.5,1")
    return alphas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sample.py edit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="our checkpoint (default: the demo models)")
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
    p.add_argument("--chunk", type=int, default=defaults.chunk,
                   help="iterations per compiled call (default: the backend's loop policy)")
    p.add_argument("--alphas", action="append", help=f"interpolation weights (default {DEFAULT_ALPHAS})")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the sweep")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--mode", choices=MODES, default="released", help="collaboration rule (as sample.py)")
    p.add_argument("--mask-scale", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=1, help="samples per alpha")
    args = p.parse_args(argv)
    targets = {name: value for name, value in (("mask", args.mask), ("text", args.text)) if value is not None}
    try:
        request = EditRequest(args.checkpoint, args.image, targets, args.seed, ImagicSettings(
            embedding_lr=args.embedding_lr, embedding_iterations=args.embedding_iterations,
            finetune_lr=args.finetune_lr, finetune_iterations=args.finetune_iterations, chunk=args.chunk))
        sweep = SweepRequest(parse_alphas(args.alphas, list(targets)), args.steps, args.eta, args.mode,
                             args.mask_scale, args.batch)
        edit(request, sweep, args.out)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

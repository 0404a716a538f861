"""The papers' evaluation on real faces: every method sampled from the same noise, one table.

    python -m cdiff_jax.evaluation.paper --data DATA_DIR --checkpoint SYSTEM --count 50 --out outputs/paper \\
        --inception pt_inception-2015-12-05-6726825d.pth --parser 79999_iter.pth --clip ViT-B-32.pt \\
        --arcface model_ir_se50.pth --lpips vgg.pth

The first `--count` (mask, caption, image) triples of the prepared dataset's test split are sampled by
each method (text expert, mask expert, equal weights, collaborative with the plain softmax and with
the released re-weighting, DDGI given its heads and GAN); example i starts from the same noise in every
method. The table gives
FID against the real test images (or `--fid-reference` statistics, pytorch-fid's .npz), CLIP score,
mask accuracy and mIoU, LPIPS, SSIM and identity to the ground truth, each per-image metric with its
standard error (`metrics` says how each is computed). Samples are written as each batch completes,
so a rerun with the same settings continues where the last one stopped; batches are split over all
devices. `table.md`, `results.json` and `results.csv` are written to --out.

`evaluate` is the program; `run` is its real-face configuration and `miniature` its toy one (the toy world's
examples, the judges in place of the real networks).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import pathlib
import sys

import jax
import numpy as np
from flax import nnx

from cdiff_jax import conditions as cond
from cdiff_jax import requests, viz
from cdiff_jax.checkpoint import load_gan, load_system
from cdiff_jax.data.celeba_multimodal import DEFAULT_RESOLUTION, DEFAULT_TEST_SIZE, data_sources
from cdiff_jax.data.images import open_image
from cdiff_jax.ddgi.features import check_ddgi_parts
from cdiff_jax.ddgi.generate import ddgi_sample
from cdiff_jax.ddgi.heads import DDGIHeads, load_heads
from cdiff_jax.diffusion.collaboration import EqualWeights, Reweighting
from cdiff_jax.evaluation.fid import load_statistics
from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics
from cdiff_jax.evaluation.metrics import (
    METRIC_FILES,
    MetricNetworks,
    load_metric_networks,
    mean_iou,
    per_example_scores,
)
from cdiff_jax.latents import latent_shape
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.noise import normal
from cdiff_jax.parallel import data_mesh, replicate, shard_batch
from cdiff_jax.progress import bar, configure_logging
from cdiff_jax.sampling import SamplerSettings, require_finite, sample
from cdiff_jax.weights.state_dict_io import CheckpointReadError


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    modalities: tuple[str, ...]
    rule: Reweighting | EqualWeights | None = None  # how experts are combined (None: plain softmax)


METHODS = (
    Method("text expert", ("text",)),
    Method("mask expert", ("mask",)),
    Method("equal weights", ("mask", "text"), EqualWeights()),
    Method("collaborative (plain)", ("mask", "text")),
    Method("collaborative (released)", ("mask", "text"), Reweighting()),
)
SETTINGS_FILE = "settings.json"
INPUT_FIELDS = {"text": "caption", "mask": "mask"}  # the example field each modality kind is conditioned on
# Example i's starting noise is drawn from fold_in(key(seed), i): the same in every method, batch size
# and device count. The step noise of the batch starting at example s: fold_in(key(seed + 1), s).
STEP_NOISE_SEED_OFFSET = 1
# DDGI: the diffusion system sampled with the released rule, its experts read at one step and mapped
# into the GAN's W+ by the heads (its experts are the heads').
DDGI_METHOD = Method("DDGI", (), Reweighting())
# Every column either configuration fills (the toy judges' attribute accuracies and Frechet distance on their
# features stand in for the CLIP score and FID); a table shows those its rows have.
COLUMNS = (
    ("fid", "FID"),
    ("frechet", "Frechet distance"),
    ("clip_score", "CLIP score"),
    ("mask_accuracy", "mask accuracy"),
    ("miou", "mIoU"),
    ("beard_accuracy", "beard accuracy"),
    ("age_accuracy", "age accuracy"),
    ("attribute_accuracy", "attribute accuracy"),
    ("lpips", "LPIPS"),
    ("ssim", "SSIM"),
    ("identity", "ID"),
)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How every method samples, so that rows differ only by method. `noise`: "per_example" draws example i's
    x_T from fold_in(key(seed), i), the same for any batch size and count; "one_draw" takes row i of one
    normal(key(seed), [count, ...]) draw (the toy evaluations' tables were measured with it)."""

    steps: int = 50
    solver: str = "ddim"
    order: int | None = None  # None: the solver's default
    eta: float = 1.0
    batch: int = 8
    seed: int = 0
    noise: str = "per_example"

    def starting_noise(self, cfg, rows: np.ndarray, count: int) -> np.ndarray:
        shape = latent_shape(cfg)
        if self.noise == "one_draw":
            return np.asarray(normal(jax.random.key(self.seed), (count, *shape)))[rows]
        return np.stack(
            [np.asarray(normal(jax.random.fold_in(jax.random.key(self.seed), int(i)), shape)) for i in rows]
        )

    def step_key(self, start: int) -> jax.Array:
        """The sampler's key for the batch that begins at example `start`."""
        return jax.random.fold_in(jax.random.key(self.seed + STEP_NOISE_SEED_OFFSET), start)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Everything that decides the samples: a rerun continues a run only if all of it is equal."""

    checkpoint: str
    data: str
    resolution: int
    test_size: int
    count: int
    methods: tuple[str, ...]
    sampler: str
    order: int | None
    steps: int
    eta: float
    batch: int
    seed: int
    ddgi_heads: str | None = None  # DDGI's row: its heads, the GAN they drive, the sampler step they read
    ddgi_gan: str | None = None
    ddgi_at_step: int | None = None

    def sampling(self) -> Sampling:
        return Sampling(self.steps, self.sampler, self.order, self.eta, self.batch, self.seed)


@dataclasses.dataclass(frozen=True)
class DDGIParts:
    heads: DDGIHeads
    generator: Generator
    at_step: int


def evaluation_split(data_dir: str, resolution: int, test_size: int, count: int):
    """The prepared dataset's test split, if it holds `count` examples."""
    split = data_sources(data_dir, resolution=resolution, test_size=test_size)["test"]
    if count > len(split):
        raise requests.UsageError(
            f"--count {count}: the test split of {data_dir} holds {len(split)} examples; ask for at most that many"
        )
    return split


def evaluation_examples(data_dir: str, resolution: int, test_size: int, count: int) -> dict[str, np.ndarray]:
    """The first `count` test triples: `image` [N, R, R, 3] uint8, `mask` [N, 32, 32] uint8, `caption` [N] str."""
    split = evaluation_split(data_dir, resolution, test_size, count)
    records = [split[i] for i in range(count)]
    return {
        "image": np.stack([r["image"] for r in records]),
        "mask": np.stack([r["mask"] for r in records]),
        "caption": np.array(
            [r["caption"].decode() if isinstance(r["caption"], bytes) else r["caption"] for r in records]
        ),
    }


def sample_path(out: pathlib.Path, method: Method, index: int) -> pathlib.Path:
    return out / "samples" / method.name.replace(" ", "_").replace("(", "").replace(")", "") / f"{index:05d}.png"


def encoded_conditions(cfg, modalities, examples: dict, rows) -> dict:
    """The conditions of `modalities` for the examples `rows`, each parsed as its kind parses user input."""
    return {
        name: cond.encode_inputs(
            [examples[INPUT_FIELDS[cfg.modalities[name].kind]][i] for i in rows], cfg.modalities[name]
        )
        for name in modalities
    }


def padded_rows(start: int, batch: int, count: int) -> np.ndarray:
    """Rows start .. start + batch - 1, the last real row repeated past `count`: every call has one shape."""
    return np.minimum(np.arange(start, start + batch), count - 1)


def generate(
    system,
    examples: dict,
    method: Method,
    sampling: Sampling,
    out: pathlib.Path,
    progress,
    ddgi: DDGIParts | None = None,
) -> None:
    """Sample every batch of `method` whose images are not all on disk yet, writing each as it completes
    (the modules' states already replicated over the data mesh)."""
    cfg, count = system.cfg, len(examples["caption"])
    mesh = data_mesh()
    settings = SamplerSettings(
        steps=sampling.steps,
        solver=sampling.solver,
        order=sampling.order,
        eta=sampling.eta,
        reweighting=method.rule if len(method.modalities) > 1 else None,
    )
    for start in range(0, count, sampling.batch):
        indices = range(start, min(start + sampling.batch, count))
        if all(sample_path(out, method, i).is_file() for i in indices):
            progress.update(1)
            continue
        rows = padded_rows(start, sampling.batch, count)
        conditions = encoded_conditions(cfg, method.modalities, examples, rows)
        x_T = sampling.starting_noise(cfg, rows, count)
        key = sampling.step_key(start)
        conditions, x_T = shard_batch(conditions, mesh), shard_batch(x_T, mesh)
        if method.name == DDGI_METHOD.name:
            result = ddgi_sample(
                system, ddgi.heads, ddgi.generator, conditions, x_T, key, settings, ddgi.at_step, method.modalities
            )
        else:
            result = sample(*nnx.split(system), conditions, x_T, key, settings)
        require_finite(result.images)
        for i, image in zip(indices, viz.to_uint8(np.asarray(result.images))):
            viz.save_png(sample_path(out, method, i), image)
        progress.update(1)


def read_samples(out: pathlib.Path, method: Method, count: int) -> np.ndarray:
    return np.stack([np.asarray(open_image(sample_path(out, method, i), "sample", "RGB")) for i in range(count)])


def summarise(values: np.ndarray) -> dict:
    """Mean, its standard error (the spread of per-image values over sqrt(N)) and the per-image values,
    which paired comparisons between methods need (every method scores the same examples)."""
    values = np.asarray(values, np.float64)
    error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "stderr": float(error), "per_image": values.tolist()}


def score(
    scorer, images: np.ndarray, examples: dict, batch: int, reference_stats=None, distance: str = "fid"
) -> tuple[dict, np.ndarray | None]:
    """One table row and the images' features. `scorer(images, examples)` gives per-image metrics, and
    optionally `parsed` / `parsed_target` label maps (pooled into mIoU) and `features` (whose Frechet distance
    to `reference_stats` is the `distance` column)."""
    per_image, pooled = {}, {}
    for start in range(0, len(images), batch):
        rows = padded_rows(start, batch, len(images))
        kept = min(batch, len(images) - start)
        for name, values in scorer(images[rows], {k: v[rows] for k, v in examples.items()}).items():
            target = pooled if name in ("parsed", "parsed_target", "features") else per_image
            target.setdefault(name, []).append(np.asarray(values)[:kept])
    row = {name: summarise(np.concatenate(values)) for name, values in per_image.items()}
    pooled = {name: np.concatenate(values) for name, values in pooled.items()}
    if "parsed" in pooled:
        row["miou"] = {"mean": mean_iou(pooled["parsed"], pooled["parsed_target"]), "stderr": None}
    features = pooled.get("features")
    if features is not None and reference_stats is not None:
        row[distance] = {"mean": frechet_distance(*gaussian_statistics(features), *reference_stats), "stderr": None}
    return row, features


def evaluate(
    system,
    examples: dict,
    methods,
    sampling: Sampling,
    scorer,
    out: pathlib.Path,
    *,
    distance: str = "fid",
    reference_stats=None,
    extra_rows: dict | None = None,
    ddgi: DDGIParts | None = None,
) -> dict:
    """Every method's samples (those missing written to out/samples), then one row per image set: the real
    images, `extra_rows` ({name: uint8 images}), each method (its samples read back one method at a time).
    The distance column is against `reference_stats`, by default the real images' own."""
    count = len(examples["caption"])
    mesh = data_mesh()
    for module in (system,) if ddgi is None else (system, ddgi.heads, ddgi.generator):
        nnx.update(module, replicate(nnx.state(module), mesh))
    with bar(-(-count // sampling.batch) * len(methods), "sampling", unit="batch") as progress:
        for method in methods:
            generate(system, examples, method, sampling, out, progress, ddgi)
    real_row, real_features = score(scorer, examples["image"], examples, sampling.batch)
    if reference_stats is None and real_features is not None:
        reference_stats = gaussian_statistics(real_features)
    results = {"real images": real_row}
    for name, images in (extra_rows or {}).items():
        results[name] = score(scorer, images, examples, sampling.batch, reference_stats, distance)[0]
    for method in bar(methods, "scoring", unit="method"):
        images = read_samples(out, method, count)
        results[method.name] = score(scorer, images, examples, sampling.batch, reference_stats, distance)[0]
    return results


def table(results: dict) -> str:
    shown = [(key, title) for key, title in COLUMNS if any(key in row for row in results.values())]
    lines = ["| method | " + " | ".join(title for _, title in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for method, row in results.items():
        cells = []
        for key, _ in shown:
            value = row.get(key)
            cells.append(
                "-"
                if value is None
                else f"{value['mean']:.4g}" + (f" ± {value['stderr']:.2g}" if value["stderr"] is not None else "")
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(results: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method"] + [f"{key}{suffix}" for key, _ in COLUMNS for suffix in ("", "_stderr")])
    for method, row in results.items():
        writer.writerow(
            [method]
            + [
                (row[key][part] if key in row and row[key][part] is not None else "")
                for key, _ in COLUMNS
                for part in ("mean", "stderr")
            ]
        )
    return buffer.getvalue()


def write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_results(out: pathlib.Path, settings: dict, results: dict, markdown: str, grid: np.ndarray) -> None:
    """A toy evaluation's outputs in `out`: grid.png, results.json (settings and results) and results.md (the
    table, also printed)."""
    out.mkdir(parents=True, exist_ok=True)
    viz.save_png(out / "grid.png", grid)
    write_text(out / "results.json", json.dumps({"settings": settings, "results": results}, indent=1))
    write_text(out / "results.md", markdown + "\n")
    print(markdown)


def run(
    protocol: Protocol, networks: MetricNetworks, out: pathlib.Path, fid_reference=None, ddgi: DDGIParts | None = None
) -> dict:
    """Sample what is missing, score every method, write the tables; returns the results."""
    examples = evaluation_examples(protocol.data, protocol.resolution, protocol.test_size, protocol.count)
    system = load_system(protocol.checkpoint)
    methods = [m for m in (*METHODS, DDGI_METHOD) if m.name in protocol.methods]
    if ddgi is not None:
        methods = [
            dataclasses.replace(m, modalities=ddgi.heads.cfg.experts) if m == DDGI_METHOD else m for m in methods
        ]
    results = evaluate(
        system,
        examples,
        methods,
        protocol.sampling(),
        functools.partial(per_example_scores, networks),
        out,
        reference_stats=fid_reference,
        ddgi=ddgi,
    )
    write_tables(out, {"protocol": dataclasses.asdict(protocol)}, results)
    return results


def write_tables(out: pathlib.Path, settings: dict, results: dict) -> None:
    """results.json (the settings and every row, per-image values included), results.csv and table.md."""
    write_text(out / "results.json", json.dumps({**settings, "results": results}, indent=1))
    write_text(out / "results.csv", csv_text(results))
    write_text(out / "table.md", table(results) + "\n")


def validate(args) -> tuple[Protocol, pathlib.Path]:
    """Every check that needs no weights, cheapest first; writes nothing."""
    requests.batch(args.batch)
    if args.batch % jax.device_count():
        raise requests.UsageError(f"--batch {args.batch}: must be a multiple of the {jax.device_count()} devices")
    if args.count < 2:
        raise requests.UsageError(f"--count {args.count}: give at least 2 examples (the papers use 50 and 3000)")
    known = [m.name for m in METHODS] + ([DDGI_METHOD.name] if args.ddgi_heads else [])
    methods = args.methods or known
    unknown = set(methods) - set(known)
    if unknown:
        raise requests.UsageError(
            f"--methods {', '.join(sorted(unknown))}: expected some of: {', '.join(known)}"
            + ("" if args.ddgi_heads else " (DDGI with --ddgi-heads and --ddgi-gan)")
        )
    if bool(args.ddgi_heads) != bool(args.ddgi_gan):
        raise requests.UsageError("give --ddgi-heads and --ddgi-gan together: the heads and the GAN they drive")
    sampler = requests.sampler(args.sampler, None, None, args.eta)
    cfg = requests.checkpoint_config(args.checkpoint)
    requests.steps(args.steps, cfg.schedule.timesteps, sampler["solver"], sampler["spacing"])
    if cfg.autoencoder.resolution != args.resolution:
        side = cfg.autoencoder.resolution
        raise requests.UsageError(
            f"--resolution {args.resolution}: the system makes {side}x{side} images; evaluate "
            "it on the dataset prepared at that size"
        )
    if args.ddgi_at_step is not None and not 1 <= args.ddgi_at_step <= args.steps:
        raise requests.UsageError(f"--ddgi-at-step {args.ddgi_at_step}: give 1..{args.steps} (1 is pure noise)")
    evaluation_split(args.data, args.resolution, args.test_size, args.count)
    for name in METRIC_FILES:
        path = getattr(args, name)
        if path is not None and not pathlib.Path(path).is_file():
            raise requests.UsageError(f"--{name} {path}: no such file; pass the network's weight file or leave it out")
    if args.fid_reference is not None and not pathlib.Path(args.fid_reference).is_file():
        raise requests.UsageError(f"--fid-reference {args.fid_reference}: no such file; pass pytorch-fid statistics")
    ddgi = {}
    if args.ddgi_heads:
        ddgi = {
            "ddgi_heads": str(pathlib.Path(args.ddgi_heads).absolute()),
            "ddgi_gan": str(pathlib.Path(args.ddgi_gan).absolute()),
            "ddgi_at_step": args.steps if args.ddgi_at_step is None else args.ddgi_at_step,
        }
    protocol = Protocol(
        str(pathlib.Path(args.checkpoint).absolute()),
        str(pathlib.Path(args.data).absolute()),
        args.resolution,
        args.test_size,
        args.count,
        tuple(methods),
        sampler["solver"],
        sampler["order"],
        args.steps,
        sampler["eta"],
        args.batch,
        args.seed,
        **ddgi,
    )
    out = requests.output_folder(args.out, is_ours=lambda p: (p / SETTINGS_FILE).is_file())
    settings = out / SETTINGS_FILE
    if settings.is_file() and json.loads(settings.read_text()) != dataclasses.asdict(protocol) | {
        "methods": list(protocol.methods)
    }:
        raise requests.UsageError(
            f"--out {out} holds samples made with other settings ({settings}); rerun with "
            "those settings to continue, or choose a new --out"
        )
    return protocol, out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared dataset folder (python -m cdiff_jax.data.celeba_multimodal)")
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    p.add_argument("--test-size", type=int, default=DEFAULT_TEST_SIZE)
    p.add_argument("--checkpoint", required=True, help="collaborative system folder (cdiff_jax.convert output)")
    p.add_argument("--count", type=int, default=50, help="test triples: 50 as the paper's FID table, or 3000")
    p.add_argument("--methods", nargs="+", help="default: every method (DDGI too when its heads are given)")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=None, help="DDIM noise (default: the released 1)")
    p.add_argument("--batch", type=int, default=8, help="images per sampling call, split over all devices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddgi-heads", help="trained DDGI heads (a ddgi stage's WORKDIR/heads) for a DDGI row")
    p.add_argument("--ddgi-gan", help="the StyleGAN2 checkpoint the DDGI heads drive")
    p.add_argument("--ddgi-at-step", type=int, help="the sampler step DDGI reads, 1..--steps (default the last)")
    p.add_argument("--fid-reference", help="pytorch-fid statistics (.npz of mu, sigma) instead of the test images")
    for name in METRIC_FILES:
        p.add_argument(f"--{name}", help=f"the {name} network's weight file (left out of the table if absent)")
    p.add_argument("--out", default="outputs/paper")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    try:
        protocol, out = validate(args)
        reference = load_statistics(pathlib.Path(args.fid_reference)) if args.fid_reference else None
        ddgi = None
        if protocol.ddgi_heads:
            ddgi = DDGIParts(load_heads(protocol.ddgi_heads), load_gan(protocol.ddgi_gan), protocol.ddgi_at_step)
            try:
                check_ddgi_parts(requests.checkpoint_config(protocol.checkpoint), ddgi.generator.cfg, ddgi.heads.cfg)
            except ValueError as err:
                raise requests.UsageError(f"--ddgi-gan and --ddgi-heads: {err}") from None
        networks = load_metric_networks({name: getattr(args, name) for name in METRIC_FILES})
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / SETTINGS_FILE, json.dumps(dataclasses.asdict(protocol), indent=1))
        results = run(protocol, networks, out, reference, ddgi)
    except (OSError, ValueError, CheckpointReadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

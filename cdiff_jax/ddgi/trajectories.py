"""DDGI's training data, sampled once: for each training example, the frozen system's DDIM trajectory
under the example's own conditions.

Kept per example: x_t at the chosen steps (step k of S is the input of the k-th denoising step, so step
1 is x_T and step S the last, nearly clean, input), the sampled image I^d_0 that stage 2 trains towards,
the ground-truth image, and the conditions as the dataset gives them (captions, label maps, scribbles),
parsed again when read, so the cache stays small. A cache is a directory of .npy arrays and a JSON
header, written under a temporary name and renamed when complete; `TrajectoryCache` reads it as a
grain data source.

    python -m cdiff_jax.ddgi.trajectories SYSTEM_DIR DATA_DIR OUT_DIR --count 2000 [--resolution 64 --test-size 1000]

samples the first COUNT training examples of a prepared dataset (cdiff_jax.data.celeba_multimodal).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import uuid
from collections.abc import Sequence

import grain
import jax
import numpy as np
from flax import nnx

from cdiff_jax import viz
from cdiff_jax.data.pipeline import ToModelInputs
from cdiff_jax.modalities import kind_entry
from cdiff_jax.noise import normal
from cdiff_jax.progress import bar
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.system import LatentDiffusionSystem

HEADER = "trajectories.json"
ARRAYS = ("x_t", "diffusion_image", "image")


@dataclasses.dataclass(frozen=True)
class TrajectorySettings:
    """How the cache is sampled (ours: the paper says only that DDGI is trained across the trajectory)."""

    steps: int = 50  # DDIM steps of the sampler
    kept: tuple[int, ...] = (1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50)  # steps whose x_t is stored, 1..steps
    eta: float = 1.0
    seed: int = 0
    batch: int = 32

    def __post_init__(self):
        bad = [k for k in self.kept if not 1 <= k <= self.steps]
        if not self.kept or bad:
            raise ValueError(f"TrajectorySettings: kept steps {bad or '()'} must lie in 1..{self.steps}")


def build_cache(
    system: LatentDiffusionSystem,
    examples: Sequence[dict],
    directory: str | os.PathLike,
    settings: TrajectorySettings = TrajectorySettings(),
) -> pathlib.Path:
    """Sample every example with all of the system's modalities and write the cache to `directory`
    (which must not exist). `examples`: dicts with "image" (uint8 [R, R, 3]) and each modality's field."""
    directory = pathlib.Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} exists; choose a new directory for the trajectory cache")
    cfg = system.cfg
    fields = {name: kind_entry(m.kind).example_field for name, m in cfg.modalities.items()}
    if not examples:
        raise ValueError("no examples to sample trajectories for")
    missing = sorted({"image", *fields.values()} - set(examples[0]))
    if missing:
        raise ValueError(f"the examples lack {missing}: the cache needs the image and every modality's condition")
    graphdef, state = nnx.split(system)
    sampler = SamplerSettings(steps=settings.steps, eta=settings.eta, record=True)
    if len(cfg.modalities) == 1:
        sampler = dataclasses.replace(sampler, reweighting=None)
    latent = (cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)
    noise = normal(jax.random.key(settings.seed), (len(examples), *latent))
    # The temporary sibling is made before sampling, so that an unwritable destination fails before any work.
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # with the user's umask (mkdtemp's would make the finished cache private)
    try:
        kept = np.asarray(settings.kept) - 1
        parts = {name: [] for name in ARRAYS}
        timesteps = None
        for start in bar(range(0, len(examples), settings.batch), "trajectories", unit="batch"):
            chunk = examples[start : start + settings.batch]
            result = sample(
                graphdef,
                state,
                parse_conditions(cfg, chunk),
                noise[start : start + len(chunk)],
                jax.random.fold_in(jax.random.key(settings.seed + 1), start),
                sampler,
            )
            trajectory = result.trajectory
            parts["x_t"].append(np.asarray(trajectory.x_t)[kept].swapaxes(0, 1))
            parts["diffusion_image"].append(viz.to_uint8(result.images))
            parts["image"].append(np.stack([e["image"] for e in chunk]))
            timesteps = np.asarray(trajectory.timesteps)[kept]
        for name, values in parts.items():
            np.save(tmp / f"{name}.npy", np.concatenate(values))
        conditions = {}
        for name, field in fields.items():
            values = [e[field].decode() if isinstance(e[field], bytes) else e[field] for e in examples]
            if isinstance(values[0], str):  # captions (TFDS gives bytes) go into the header as text
                conditions[name] = {"field": field, "values": values}
            else:
                np.save(tmp / f"condition_{name}.npy", np.stack(values))
                conditions[name] = {"field": field}
        header = {
            "count": len(examples),
            "steps": settings.steps,
            "kept": list(settings.kept),
            "timesteps": timesteps.tolist(),
            "eta": settings.eta,
            "seed": settings.seed,
            "conditions": conditions,
        }
        (tmp / HEADER).write_text(json.dumps(header, indent=1))
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def parse_conditions(cfg, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    """Each modality's condition batch, parsed from the examples' fields as the expert reads it."""
    conditions = {}
    for name, m in cfg.modalities.items():
        kind = kind_entry(m.kind)
        conditions[name] = np.asarray(kind.parse([e[kind.example_field] for e in examples], m.encoder))
    return conditions


class TrajectoryCache:
    """A written cache as a grain data source: record i is {"x_t" [K, h, w, c], "diffusion_image",
    "image" (uint8), and each modality's dataset field}; `timesteps` [K] and `kept` hold the steps."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        header_file = self.directory / HEADER
        if not header_file.is_file():
            raise FileNotFoundError(
                f"{self.directory} is not a DDGI trajectory cache (no {HEADER}); write one with "
                "cdiff_jax.ddgi.trajectories.build_cache"
            )
        self.header = json.loads(header_file.read_text())
        self.timesteps = np.asarray(self.header["timesteps"], np.int32)
        self.kept = tuple(self.header["kept"])
        self.arrays = {name: np.load(self.directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        self.conditions = {}
        for name, spec in self.header["conditions"].items():
            values = spec.get("values")
            if values is None:
                values = np.load(self.directory / f"condition_{name}.npy", mmap_mode="r")
            self.conditions[name] = (spec["field"], values)

    def __len__(self) -> int:
        return self.header["count"]

    def __getitem__(self, index: int) -> dict:
        record = {name: np.asarray(values[index]) for name, values in self.arrays.items()}
        for field, values in self.conditions.values():
            if isinstance(values, list):
                record[field] = values[index]
            else:  # a cache written before captions went into the header stored them as bytes
                value = np.asarray(values[index])
                record[field] = value.item().decode() if value.dtype.kind == "S" else value
        return record

    def __repr__(self) -> str:
        return f"TrajectoryCache({str(self.directory)!r})"


class DDGIInputs(grain.transforms.Map):
    """A cache record -> model inputs: what `ToModelInputs` makes of the image and the conditions, plus x_t
    [K, h, w, c] and I^d_0 in [-1, 1]."""

    def map(self, record: dict) -> dict[str, np.ndarray]:
        inputs = ToModelInputs().map(record)
        inputs["x_t"] = np.asarray(record["x_t"], np.float32)
        inputs["diffusion_image"] = np.asarray(record["diffusion_image"], np.float32) / 127.5 - 1.0
        return inputs


def main(argv=None) -> int:
    from cdiff_jax.checkpoint import load_system
    from cdiff_jax.data.celeba_multimodal import data_sources
    from cdiff_jax.progress import configure_logging

    p = argparse.ArgumentParser(description="Sample DDGI's trajectory cache from a prepared dataset.")
    p.add_argument("system", help="our diffusion checkpoint directory (e.g. cdiff_jax/demo_models/collab)")
    p.add_argument("data_dir", help="a prepared CelebAMultiModal TFDS directory")
    p.add_argument("out_dir", help="the cache directory to write (must not exist)")
    p.add_argument("--count", type=int, required=True, help="training examples to sample, from the first")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--steps", type=int, default=TrajectorySettings.steps)
    p.add_argument("--batch", type=int, default=TrajectorySettings.batch)
    p.add_argument("--seed", type=int, default=TrajectorySettings.seed)
    args = p.parse_args(argv)
    configure_logging()
    try:
        if pathlib.Path(args.out_dir).exists():
            raise FileExistsError(f"{args.out_dir} exists; choose a new directory for the trajectory cache")
        kept = tuple(sorted({1, *range(args.steps // 10, args.steps + 1, max(1, args.steps // 10))} - {0}))
        settings = TrajectorySettings(steps=args.steps, kept=kept, seed=args.seed, batch=args.batch)
        train = data_sources(args.data_dir, resolution=args.resolution, test_size=args.test_size)["train"]
        if not 1 <= args.count <= len(train):
            raise ValueError(f"--count {args.count}: the training split has {len(train)} examples")
        examples = [train[i] for i in range(args.count)]
        build_cache(load_system(args.system), examples, args.out_dir, settings)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

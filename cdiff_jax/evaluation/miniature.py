"""The paper's evaluation in miniature: does collaboration keep what each expert is good at?

Held-out toy faces give (label map, caption) pairs. Each is sampled, from the same starting noise,
by five methods: the text expert alone, the mask expert alone, fixed equal weights (Composable
Diffusion's rule), and the learned dynamic diffusers with the plain softmax and with the released
re-weighting. The judges score every image:

* mask accuracy: pixel accuracy of the face parser's map of the image against the conditioning map
  (the paper's face-parsing score), and the mean intersection over union of the classes (DDGI's mIoU);
* attribute accuracy: the classifier's beard length and age decade against the caption's (standing
  in for the paper's CLIP score), with their mean;
* Frechet distance between the classifier's features of the generated and the real held-out faces
  (standing in for FID).

The judges' scores of the real faces and of their autoencoder reconstructions are reported too:
no sampler can do better than the reconstructions, since every image passes through the decoder.

    python -m cdiff_jax.evaluation.miniature --count 200 --out outputs/eval

writes `results.json` (every row with its per-image values), `results.csv`, `table.md` and `grid.png` (mask | real |
each method) to --out, and the samples to `--out/samples` as they are made (a rerun continues). This is the
evaluation program of `paper.py` in its toy configuration: the toy world's examples, the judges as the metrics.
The pairs are regenerated from their seeds (the last `test_size` examples of the dataset written
with `--dataset-seed`), so no dataset files are needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys

import jax
import numpy as np
from flax import nnx

from cdiff_jax import requests, viz
from cdiff_jax.checkpoint import load_system
from cdiff_jax.data.masks import colorize
from cdiff_jax.data.toy_faces import example_seed, make_example
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics
from cdiff_jax.evaluation.metrics import mean_iou
from cdiff_jax.evaluation.paper import (
    METHODS,
    Method,
    Sampling,
    encoded_conditions,
    evaluate,
    read_samples,
    table,
    write_tables,
)
from cdiff_jax.latents import reconstruct
from cdiff_jax.progress import configure_logging
from cdiff_jax.requests import DEMO_CHECKPOINT
from cdiff_jax.sampling import SamplerSettings, sample

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
DEMO_JUDGES = PACKAGE / "evaluation" / "judges_toy"
# The demo dataset: `python -m cdiff_jax.data.toy_faces data/toy_faces --count 10000 --seed 0`, last 1000 held out.
DATASET_SEED, DATASET_SIZE, TEST_SIZE = 0, 10_000, 1000


def held_out_examples(count: int, first: int = DATASET_SIZE - TEST_SIZE, seed: int = DATASET_SEED) -> list[dict]:
    """Examples `first`, `first + 1`, ... of the toy dataset written with `seed` (its held-out split), each
    with the `seed` it was made from (to re-render it with other attributes)."""
    seeds = [example_seed(seed, first + i) for i in range(count)]
    return [{**make_example(s), "seed": s} for s in seeds]


def example_conditions(cfg, modalities, examples: list[dict]) -> dict:
    """The encoded conditions of `modalities` for a batch of toy examples (captions and label maps)."""
    return encoded_conditions(cfg, modalities, as_arrays(examples), range(len(examples)))


def starting_noise(cfg, count: int, seed: int) -> np.ndarray:
    """x_T of the first `count` examples: example i starts from the same noise in every method and table."""
    return Sampling(seed=seed, noise="one_draw").starting_noise(cfg, np.arange(count), count)


def step_noise_key(seed: int, start: int) -> jax.Array:
    """The sampler's key for the batch that begins at example `start`."""
    return Sampling(seed=seed).step_key(start)


def generate(
    system,
    examples: list[dict],
    method: Method,
    *,
    steps: int,
    batch: int,
    seed: int,
    solver: str = "ddim",
    order: int | None = None,
    eta: float = 1.0,
) -> np.ndarray:
    """uint8 images [N, 64, 64, 3] of `method` for the examples; example i starts from the same noise
    in every method."""
    graphdef, state = nnx.split(system)
    cfg = system.cfg
    settings = SamplerSettings(
        steps=steps,
        solver=solver,
        order=order,
        eta=eta,
        reweighting=method.rule if len(method.modalities) > 1 else None,
    )
    noise = starting_noise(cfg, len(examples), seed)
    out = []
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        x_T = noise[start : start + len(chunk)]
        result = sample(
            graphdef,
            state,
            example_conditions(cfg, method.modalities, chunk),
            x_T,
            step_noise_key(seed, start),
            settings,
        )
        out.append(viz.to_uint8(np.asarray(result.images)))
    return np.concatenate(out)


def as_arrays(examples: list[dict]) -> dict[str, np.ndarray]:
    """Toy examples as the evaluation program takes them: `image`, `mask` (the 64x64 label map, which the
    mask encoder resizes), `caption`, and the truth the judges score against (`labels`, `beard`, `age`)."""
    return {
        "image": np.stack([e["image"] for e in examples]),
        "mask": np.stack([e["labels"] for e in examples]),
        "labels": np.stack([e["labels"] for e in examples]),
        "caption": np.array([e["caption"] for e in examples]),
        "beard": np.array([e["attributes"]["beard"] for e in examples]),
        "age": np.array([e["attributes"]["age"] for e in examples]),
    }


def judge_scores(judges, images: np.ndarray, examples: dict) -> dict[str, np.ndarray]:
    """The judges' per-image scores (`as_arrays` examples): mask accuracy against the label map, beard, age and
    attribute (their mean) accuracy against the caption; the parsed maps (for mIoU) and the features (for the
    Frechet distance)."""
    x = J.from_uint8(images)
    parsed = np.asarray(J.parse(judges, x))
    beard, age = (np.asarray(a) for a in J.attribute_predictions(judges, x))
    beard_right = (beard == examples["beard"]).astype(float)
    age_right = (age == examples["age"]).astype(float)
    return {
        "mask_accuracy": np.mean(parsed == examples["labels"], axis=(1, 2)),
        "beard_accuracy": beard_right,
        "age_accuracy": age_right,
        "attribute_accuracy": (beard_right + age_right) / 2,
        "parsed": parsed,
        "parsed_target": examples["labels"],
        "features": np.asarray(J.features(judges, x)),
    }


def score(judges, images: np.ndarray, examples: list[dict], real_stats) -> dict:
    """The judges' means for one set of images (the other toy evaluations' row), with the per-example
    accuracies and, given the real images' statistics, the Frechet distance."""
    scores = judge_scores(judges, images, as_arrays(examples))
    row = {
        name: float(np.mean(scores[name]))
        for name in ("mask_accuracy", "beard_accuracy", "age_accuracy", "attribute_accuracy")
    }
    row |= {
        "mask_miou": mean_iou(scores["parsed"], scores["parsed_target"]),
        "per_example_mask_accuracy": scores["mask_accuracy"].tolist(),
        "per_example_attribute_accuracy": scores["attribute_accuracy"].tolist(),
    }
    if real_stats is not None:
        row["frechet"] = frechet_distance(*gaussian_statistics(scores["features"]), *real_stats)
    return row


def run(
    checkpoint,
    judges_dir,
    count: int,
    out: pathlib.Path,
    *,
    steps: int = 50,
    batch: int = 50,
    seed: int = 0,
    methods=METHODS,
) -> dict:
    """The evaluation program (`paper.evaluate`) with the toy configuration; the samples go to out/samples.
    Returns the results per row."""
    system = load_system(checkpoint)
    judges = J.load_judges(judges_dir)
    examples = as_arrays(held_out_examples(count))
    # The ceiling of any method: the judges on the real faces and on their autoencoder reconstructions.
    reconstructed = viz.to_uint8(
        np.asarray(reconstruct(*nnx.split(system.autoencoder), J.from_uint8(examples["image"])))
    )
    sampling = Sampling(steps=steps, eta=1.0, batch=batch, seed=seed, noise="one_draw")
    return evaluate(
        system,
        examples,
        methods,
        sampling,
        functools.partial(judge_scores, judges),
        out,
        distance="frechet",
        extra_rows={"autoencoder reconstructions": reconstructed},
    )


def picture(examples: list[dict], images: dict, rows: int = 8) -> np.ndarray:
    """Rows of mask | real | one column per method."""
    rows = min(rows, len(examples))
    columns = [
        np.stack([colorize(e["labels"]) for e in examples[:rows]]),
        np.stack([e["image"] for e in examples[:rows]]),
    ] + [im[:rows] for im in images.values()]
    labels = ["mask", "real"] + [name.replace("collaborative", "collab") for name in images]
    return viz.grid(np.stack(columns, axis=1), col_labels=labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="collaborative system (default: the demo)")
    p.add_argument("--judges", default=str(DEMO_JUDGES), help="judges directory (default: the shipped ones)")
    p.add_argument("--count", type=int, default=200, help="held-out (mask, caption) pairs")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/eval")
    args = p.parse_args(argv)
    configure_logging()
    if not 2 <= args.count <= TEST_SIZE:
        p.error(f"--count must be in 2..{TEST_SIZE} (the held-out split; standard errors need two)")
    settings = {k: getattr(args, k) for k in ("checkpoint", "judges", "count", "steps", "batch", "seed")}
    try:
        out = requests.output_folder(
            args.out, is_ours=lambda path: (path / "results.json").is_file() or (path / "samples").is_dir()
        )
        previous = out / "results.json"
        if previous.is_file() and json.loads(previous.read_text()).get("settings") != settings:
            raise requests.UsageError(f"--out {out} holds an evaluation with other settings; choose a new --out")
        results = run(args.checkpoint, args.judges, args.count, out, steps=args.steps, batch=args.batch, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shown = min(8, args.count)
    viz.save_png(
        out / "grid.png", picture(held_out_examples(shown), {m.name: read_samples(out, m, shown) for m in METHODS})
    )
    write_tables(out, {"settings": settings}, results)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

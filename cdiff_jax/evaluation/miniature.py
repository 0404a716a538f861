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

writes `results.json`, `results.md` (the table) and `grid.png` (mask | real | each method) to --out.
The pairs are regenerated from their seeds (the last `test_size` examples of the dataset written
with `--dataset-seed`), so no dataset files are needed.
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
from cdiff_jax import viz
from cdiff_jax.checkpoint import load_system
from cdiff_jax.data.masks import colorize
from cdiff_jax.data.toy_faces import example_seed, make_example
from cdiff_jax.diffusion.collaboration import EqualWeights, Reweighting
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics
from cdiff_jax.evaluation.metrics import mean_iou
from cdiff_jax.latents import reconstruct
from cdiff_jax.noise import normal
from cdiff_jax.progress import bar, configure_logging, log
from cdiff_jax.requests import DEMO_CHECKPOINT
from cdiff_jax.sampling import SamplerSettings, sample

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
DEMO_JUDGES = PACKAGE / "evaluation" / "judges_toy"
# The demo dataset: `python -m cdiff_jax.data.toy_faces data/toy_faces --count 10000 --seed 0`, last 1000 held out.
DATASET_SEED, DATASET_SIZE, TEST_SIZE = 0, 10_000, 1000
# The starting noise comes from key(seed); each batch's step noise from key(seed + 1) folded with the index
# of the batch's first example, a stream apart from the starting noise's, different for every batch.
STEP_NOISE_SEED_OFFSET = 1


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


def held_out_examples(count: int, first: int = DATASET_SIZE - TEST_SIZE, seed: int = DATASET_SEED) -> list[dict]:
    """Examples `first`, `first + 1`, ... of the toy dataset written with `seed` (its held-out split), each
    with the `seed` it was made from (to re-render it with other attributes)."""
    seeds = [example_seed(seed, first + i) for i in range(count)]
    return [{**make_example(s), "seed": s} for s in seeds]


def example_conditions(cfg, modalities, examples: list[dict]) -> dict:
    """The encoded conditions of `modalities` for a batch of toy examples (captions and label maps)."""
    conditions = {}
    for name in modalities:
        m = cfg.modalities[name]
        conditions[name] = (cond.encode_captions([e["caption"] for e in examples], m.encoder).ids if m.kind == "text"
                            else cond.encode_masks([e["labels"] for e in examples], m.encoder))
    return conditions


def starting_noise(cfg, count: int, seed: int) -> jax.Array:
    """x_T of the first `count` examples: example i starts from the same noise in every method and table."""
    return normal(jax.random.key(seed), (count, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim))


def step_noise_key(seed: int, start: int) -> jax.Array:
    """The sampler's key for the batch that begins at example `start`."""
    return jax.random.fold_in(jax.random.key(seed + STEP_NOISE_SEED_OFFSET), start)


def generate(system, examples: list[dict], method: Method, *, steps: int, batch: int, seed: int,
             solver: str = "ddim", order: int | None = None, eta: float = 1.0) -> np.ndarray:
    """uint8 images [N, 64, 64, 3] of `method` for the examples; example i starts from the same noise
    in every method."""
    graphdef, state = nnx.split(system)
    cfg = system.cfg
    settings = SamplerSettings(steps=steps, solver=solver, order=order, eta=eta,
                               reweighting=method.rule if len(method.modalities) > 1 else None)
    noise = starting_noise(cfg, len(examples), seed)
    out = []
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        x_T = noise[start:start + len(chunk)]
        result = sample(graphdef, state, example_conditions(cfg, method.modalities, chunk), x_T,
                        step_noise_key(seed, start), settings)
        out.append(viz.to_uint8(np.asarray(result.images)))
    return np.concatenate(out)


def score(judges, images: np.ndarray, examples: list[dict], real_stats) -> dict:
    """Mask and attribute accuracy of images against their examples' conditions, and the Frechet distance."""
    x = J.from_uint8(images)
    parsed = np.asarray(J.parse(judges, x))
    labels = np.stack([e["labels"] for e in examples])
    beard, age = (np.asarray(a) for a in J.attribute_predictions(judges, x))
    beard_right = (beard == [e["attributes"]["beard"] for e in examples]).astype(float)
    age_right = (age == [e["attributes"]["age"] for e in examples]).astype(float)
    attributes_right = (beard_right + age_right) / 2
    row = {"mask_accuracy": float(np.mean(parsed == labels)), "mask_miou": mean_iou(parsed, labels),
           "beard_accuracy": float(np.mean(beard_right)),
           "age_accuracy": float(np.mean(age_right)), "attribute_accuracy": float(np.mean(attributes_right)),
           # per example, for the spread of the means above
           "per_example_mask_accuracy": np.mean(parsed == labels, axis=(1, 2)).tolist(),
           "per_example_attribute_accuracy": attributes_right.tolist()}
    if real_stats is not None:
        row["frechet"] = frechet_distance(*gaussian_statistics(np.asarray(J.features(judges, x))), *real_stats)
    return row


def run(checkpoint, judges_dir, count: int, *, steps: int = 50, batch: int = 50, seed: int = 0,
        methods=METHODS) -> tuple[dict, dict]:
    """(results per method plus "real images", generated images per method)."""
    system = load_system(checkpoint)
    judges = J.load_judges(judges_dir)
    examples = held_out_examples(count)
    real = np.stack([e["image"] for e in examples])
    real_stats = gaussian_statistics(np.asarray(J.features(judges, J.from_uint8(real))))
    reconstructed = viz.to_uint8(np.asarray(reconstruct(*nnx.split(system.autoencoder), J.from_uint8(real))))
    # The ceiling of any method: the judges on the real faces and on their autoencoder reconstructions.
    results = {"real images": score(judges, real, examples, None),
               "autoencoder reconstructions": score(judges, reconstructed, examples, real_stats)}
    images = {}
    for method in bar(methods, "evaluating", unit="method"):
        start = time.monotonic()
        images[method.name] = generate(system, examples, method, steps=steps, batch=batch, seed=seed)
        results[method.name] = score(judges, images[method.name], examples, real_stats)
        log.info("%s: %.0fs", method.name, time.monotonic() - start)
    return results, images


def table(results: dict) -> str:
    """The results as a Markdown table."""
    lines = ["| method | mask accuracy | beard accuracy | age accuracy | attribute accuracy | Frechet distance |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        frechet = f"{r['frechet']:.2f}" if "frechet" in r else "-"
        lines.append(f"| {name} | {r['mask_accuracy']:.3f} | {r['beard_accuracy']:.3f} | {r['age_accuracy']:.3f} | "
                     f"{r['attribute_accuracy']:.3f} | {frechet} |")
    return "\n".join(lines)


def picture(examples: list[dict], images: dict, rows: int = 8) -> np.ndarray:
    """Rows of mask | real | one column per method."""
    rows = min(rows, len(examples))
    columns = [np.stack([colorize(e["labels"]) for e in examples[:rows]]),
               np.stack([e["image"] for e in examples[:rows]])] + [im[:rows] for im in images.values()]
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
    if not 1 <= args.count <= TEST_SIZE:
        p.error(f"--count must be in 1..{TEST_SIZE} (the held-out split)")
    try:
        results, images = run(args.checkpoint, args.judges, args.count, steps=args.steps, batch=args.batch,
                              seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("checkpoint", "judges", "count", "steps", "seed")}
    viz.save_png(out / "grid.png", picture(held_out_examples(min(8, args.count)), images))
    write_text(out / "results.json", json.dumps({"settings": settings, "results": results}, indent=1))
    write_text(out / "results.md", table(results) + "\n")
    print(table(results))
    return 0


def write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())

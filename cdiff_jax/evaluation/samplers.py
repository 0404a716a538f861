"""Fewer steps at equal quality? The collaborative system sampled by each solver at several step counts.

The miniature evaluation's held-out (mask, caption) pairs, starting noise and judges; the method is the
collaborative system with the released re-weighting. Each row is a solver at a step count, scored by mask
accuracy, attribute accuracy (each with its standard error over the examples) and the Frechet distance
(with a bootstrap standard error over the generated images), and timed per image after compilation. The
first row, 50-step DDIM with eta 1, is what the released scripts run: a row matches it when neither its
mask nor its attribute accuracy is more than one standard error (of the first row's) below that row's.

    python -m cdiff_jax.evaluation.samplers --count 500 --out outputs/samplers

writes `results.json`, `results.md` (the table) and `grid.png` (mask | real | each row) to --out.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

from cdiff_jax.checkpoint import NotACheckpointError, load_system
from cdiff_jax.diffusion.solvers import SOLVERS
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation import miniature as M
from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics
from cdiff_jax.evaluation.paper import write_results
from cdiff_jax.progress import bar, configure_logging, log
from cdiff_jax.requests import DEMO_CHECKPOINT

# (solver, order, steps, eta): the released sampler first, then each solver at fewer steps; deterministic
# DDIM (eta 0) separates what the step count costs from what dropping DDIM's noise does.
GRID = (
    ("ddim", None, 50, 1.0),
    ("ddim", None, 25, 1.0),
    ("ddim", None, 15, 1.0),
    ("ddim", None, 10, 1.0),
    ("ddim", None, 50, 0.0),
    ("ddim", None, 15, 0.0),
    ("dpmpp", 2, 25, 0.0),
    ("dpmpp", 2, 15, 0.0),
    ("dpmpp", 2, 10, 0.0),
    ("dpmpp", 2, 5, 0.0),
    ("unipc", 2, 25, 0.0),
    ("unipc", 2, 15, 0.0),
    ("unipc", 2, 10, 0.0),
    ("unipc", 2, 5, 0.0),
)
METHOD = M.METHODS[-1]  # the collaborative system with the released re-weighting
BOOTSTRAP = 100  # resamples for the Frechet distance's standard error


def row_name(solver: str, order: int | None, steps: int, eta: float) -> str:
    order = SOLVERS[solver].default_order if order is None else order
    return f"ddim eta {eta:g}, {steps}" if solver == "ddim" else f"{solver} (order {order}), {steps}"


def short_name(solver: str, order: int | None, steps: int, eta: float) -> str:
    """A grid column's label."""
    order = SOLVERS[solver].default_order if order is None else order
    return {"ddim": f"DDIM{eta:g}", "dpmpp": f"DPM{order}", "unipc": f"UniPC{order}"}[solver] + f" {steps}"


def standard_error(values) -> float:
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values)))


def frechet_with_error(features: np.ndarray, real_stats, rng: np.random.Generator) -> tuple[float, float]:
    """The Frechet distance of the features to the real statistics, and its bootstrap standard error."""
    resampled = [
        frechet_distance(*gaussian_statistics(features[rng.integers(0, len(features), len(features))]), *real_stats)
        for _ in range(BOOTSTRAP)
    ]
    return frechet_distance(*gaussian_statistics(features), *real_stats), float(np.std(resampled, ddof=1))


def run(checkpoint, judges_dir, count: int, *, batch: int = 50, seed: int = 0, grid=GRID) -> tuple[dict, dict]:
    """(a row of scores per grid entry, uint8 images per row under its short name)."""
    system = load_system(checkpoint)
    judges = J.load_judges(judges_dir)
    examples = M.held_out_examples(count)
    real = np.stack([e["image"] for e in examples])
    real_stats = gaussian_statistics(np.asarray(J.features(judges, J.from_uint8(real))))
    rng = np.random.default_rng(seed)
    results, images = {}, {}
    for solver, order, steps, eta in bar(grid, "solvers", unit="row"):
        name = row_name(solver, order, steps, eta)
        settings = dict(steps=steps, batch=batch, seed=seed, solver=solver, order=order, eta=eta)
        M.generate(system, examples[: min(batch, count)], METHOD, **settings)  # compile, off the clock
        start = time.perf_counter()
        generated = M.generate(system, examples, METHOD, **settings)
        seconds = (time.perf_counter() - start) / count
        row = M.score(judges, generated, examples, None)
        features = np.asarray(J.features(judges, J.from_uint8(generated)))
        frechet, frechet_se = frechet_with_error(features, real_stats, rng)
        results[name] = {
            "solver": solver,
            "order": order,
            "steps": steps,
            "eta": eta,
            "seconds_per_image": seconds,
            "mask_accuracy": row["mask_accuracy"],
            "mask_accuracy_se": standard_error(row["per_example_mask_accuracy"]),
            "attribute_accuracy": row["attribute_accuracy"],
            "attribute_accuracy_se": standard_error(row["per_example_attribute_accuracy"]),
            "frechet": frechet,
            "frechet_se": frechet_se,
        }
        images[short_name(solver, order, steps, eta)] = generated
        log.info(
            "%s: mask %.3f, attributes %.3f, Frechet %.1f, %.3f s/image",
            name,
            row["mask_accuracy"],
            row["attribute_accuracy"],
            frechet,
            seconds,
        )
    return results, images


def matches_the_first_row(results: dict) -> dict[str, bool]:
    """Rows whose mask and attribute accuracy are both no more than one standard error (of the first row's)
    below the first row's: as good, within the noise of the measurement, or better."""
    first = next(iter(results.values()))
    return {
        name: all(r[k] >= first[k] - first[f"{k}_se"] for k in ("mask_accuracy", "attribute_accuracy"))
        for name, r in results.items()
    }


def table(results: dict) -> str:
    matches = matches_the_first_row(results)
    first = next(iter(results.values()))
    lines = [
        "| sampler, steps | mask accuracy | attribute accuracy | Frechet distance | s / image | "
        "as good as the first row (1 SE) | time vs the first row |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['mask_accuracy']:.3f} ± {r['mask_accuracy_se']:.3f} | "
            f"{r['attribute_accuracy']:.3f} ± {r['attribute_accuracy_se']:.3f} | "
            f"{r['frechet']:.1f} ± {r['frechet_se']:.1f} | {r['seconds_per_image']:.4f} | "
            f"{'yes' if matches[name] else 'no'} | "
            f"{r['seconds_per_image'] / first['seconds_per_image']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="collaborative system (default: the demo)")
    p.add_argument("--judges", default=str(M.DEMO_JUDGES), help="judges directory (default: the shipped ones)")
    p.add_argument("--count", type=int, default=500, help="held-out (mask, caption) pairs")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/samplers")
    args = p.parse_args(argv)
    configure_logging()
    if not 2 <= args.count <= M.TEST_SIZE:
        p.error(f"--count must be in 2..{M.TEST_SIZE} (the held-out split; standard errors need two)")
    try:
        results, images = run(args.checkpoint, args.judges, args.count, batch=args.batch, seed=args.seed)
    except (FileNotFoundError, ValueError, NotACheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shown = M.held_out_examples(min(8, args.count))
    settings = {k: getattr(args, k) for k in ("checkpoint", "judges", "count", "batch", "seed")}
    write_results(
        pathlib.Path(args.out),
        settings,
        results,
        table(results),
        M.picture(shown, {name: im[: len(shown)] for name, im in images.items()}),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

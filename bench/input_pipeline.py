"""The training input pipeline: batches per second of the loader alone by worker count, and the trainer's time per
step with the next batches read before (serial) or while (overlapped, the trainer's order) the devices run a step.

    python bench/input_pipeline.py                         # demo expert stage, 64x64, global batch 32
    python bench/input_pipeline.py --resolution 256 --steps 6 --workers 0 2

The data are noise faces (images, 32x32 masks, captions) prepared once in --data (default a temporary folder);
the stage is the demo's text expert (`configs/train_demo.py:expert_text`) with fresh weights. Each loop variant
runs after the same compiled warm-up step; the ratio overlapped / serial is the figure to read (absolute CPU
times are noisy here).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from trainer_runs import prepared_noise_faces  # noqa: E402

from cdiff_jax.config import load_config  # noqa: E402
from cdiff_jax.parallel import data_mesh, global_batch  # noqa: E402
from cdiff_jax.train.stages import diffusion_stage  # noqa: E402


def loader_rate(stage, batches: int) -> float:
    """Batches per second of the loader alone, after its first batch (workers started, caches warm)."""
    iterator = iter(stage.loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    iterator.close()
    return batches / seconds


def seconds_per_step(stage, mesh, state, steps: int, overlapped: bool):
    """Mean wall time of a training step, its batch read before the step (serial) or during the previous one, and
    the state after the steps (the step donates its input state)."""
    iterator = iter(stage.loader)

    def read():
        return global_batch({k: v[None] for k, v in next(iterator).items()}, mesh, batch_axis=1)

    upcoming = read()
    start = time.perf_counter()
    for _ in range(steps):
        if overlapped:
            state, metrics = stage.run(state, upcoming)
            upcoming = read()
        else:
            state, metrics = stage.run(state, read())
        np.asarray(metrics.loss)  # the trainer reads every step's metrics
    seconds = (time.perf_counter() - start) / steps
    iterator.close()
    return seconds, state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--data", help="a prepared noise-face dataset to reuse (default: made in a temporary folder)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = (
            pathlib.Path(args.data)
            if args.data
            else prepared_noise_faces(pathlib.Path(tmp), 4 * args.batch, args.resolution, test_size=args.batch)
        )
        base = load_config("configs/train_demo.py:expert_text").replace(
            data_dir=str(data),
            resolution=args.resolution,
            global_batch=args.batch,
            init_from=(),
            val_every=0,
            sample_every=0,
            test_size=args.batch,
        )
        mesh = data_mesh()
        print(
            f"| input pipeline, {args.resolution}x{args.resolution}, global batch {args.batch} | workers | "
            "loader batches/s | s/step serial | s/step overlapped | overlapped / serial |"
        )
        print("|---|---|---|---|---|---|")
        for workers in args.workers:
            stage = diffusion_stage(base.replace(data_workers=workers), mesh)
            rate = loader_rate(stage, 2 * args.steps)
            _, state = seconds_per_step(stage, mesh, stage.state, 1, overlapped=False)  # compile and warm up
            serial, state = seconds_per_step(stage, mesh, state, args.steps, overlapped=False)
            overlapped, state = seconds_per_step(stage, mesh, state, args.steps, overlapped=True)
            print(
                f"| demo text expert | {workers} | {rate:.1f} | {serial:.3f} | {overlapped:.3f} | "
                f"{overlapped / serial:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

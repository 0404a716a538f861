"""Train any part of the system: the dynamic diffusers (`collab`, the paper's stage), an expert, the autoencoder, or
DDGI's StyleGAN2 (`gan`).

    cdiff train --config configs/train_collab.py:512 --workdir runs/collab_512
    cdiff train --config configs/train_collab.py:512 --workdir runs/collab_512 --set steps=200000
    cdiff train --config configs/train_demo.py:gan --workdir runs/demo/gan     # no dataset needed

(`python train.py ...` in a checkout is the same command.) The data directory must hold the prepared
TFDS dataset (`python -m cdiff_jax.data.celeba_multimodal MANUAL_DIR DATA_DIR --resolution R --test-size N`
builds it; configs/train_demo.py's docstring has the commands for the toy faces). A run resumes
from the latest checkpoint in --workdir; SIGTERM or Ctrl-C saves and exits with status 128 + the signal (143
after SIGTERM, as a preempted job: run the same command again to resume). On a TPU pod slice run the same
command on every host with --distributed (see README).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import sys

import jax


def parse_overrides(pairs: list[str]) -> dict:
    """--set key=value pairs; values are Python literals where they parse, strings otherwise."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="cdiff train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="a training config, FILE.py[:ARG]")
    p.add_argument(
        "--workdir",
        required=True,
        help="run directory: checkpoints, logs, samples (a local folder, or gs://bucket/path)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host: TPU pods, GPU clusters); "
        "on TPU and SLURM it finds the other hosts itself",
    )
    p.add_argument("--coordinator", help="host:port of process 0, where the cluster is not detected")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    args = p.parse_args(argv)
    if args.distributed:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's notes on configs and decoders

    from cdiff_jax.config import load_config
    from cdiff_jax.paths import CannotWrite, writing
    from cdiff_jax.progress import configure_logging
    from cdiff_jax.train.checkpoints import RESUME
    from cdiff_jax.train.trainer import TrainingDiverged, train

    configure_logging()
    try:
        cfg = load_config(args.config)
        fields = {f.name for f in dataclasses.fields(cfg)}
        overrides = parse_overrides(args.set)
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"--set: unknown config fields {unknown}")
        try:
            cfg = cfg.replace(**overrides)
        except ValueError as err:
            raise ValueError(f"--set {err}") from None
        # Training also reads (data, checkpoints), so only a full disk or the like is taken for a failed write into
        # --workdir; a failed checkpoint save names its checkpoint (TrainCheckpoints).
        with writing(args.workdir, RESUME, reads_too=True):
            return train(cfg, args.workdir)
    except TrainingDiverged as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    except CannotWrite as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""python -m cdiff_jax.convert SRC DST [--config CONFIG]: official checkpoint -> our checkpoint;
python -m cdiff_jax.convert --to-official DIR OUT: our checkpoint -> official .safetensors or .ckpt."""

import argparse
import pathlib
import sys
from collections.abc import Callable

from cdiff_jax.config import SystemConfig, load_config
from cdiff_jax.convert.converter import convert_checkpoint
from cdiff_jax.convert.official_config import load_official_yaml
from cdiff_jax.paths import CannotWrite, writing
from cdiff_jax.progress import configure_logging


def resolve_config(spec: str) -> SystemConfig:
    """--config: one of ours (`FILE.py[:ARG]`, through `load_config`) or an official YAML."""
    if pathlib.Path(spec).suffix in (".yaml", ".yml"):
        return load_official_yaml(spec)
    return load_config(spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdiff_jax.convert",
        description="Convert an official Collaborative Diffusion checkpoint (.ckpt or .safetensors) "
        "into a cdiff_jax checkpoint directory (config.json + orbax params/), or with --to-official "
        "export one of ours back to the official format.",
    )
    parser.add_argument(
        "src",
        help="official checkpoint: {256,512}_{vae,mask,text,codiff_mask_text}.ckpt or "
        ".safetensors; or a StyleGAN2 generator: NVIDIA .pkl, rosinality / pSp / e4e .pt; "
        "with --to-official: our checkpoint directory",
    )
    parser.add_argument(
        "dst",
        help="output directory (written atomically); with --to-official: the official file, "
        ".safetensors or .ckpt (Lightning's {'state_dict': ...}), written atomically",
    )
    parser.add_argument(
        "--config",
        help="architecture: one of ours (FILE.py[:ARG], e.g. released.py:512_codiff) or the official YAML "
        "it was trained with; default: the released config matching the detected type and resolution",
    )
    parser.add_argument(
        "--to-official",
        action="store_true",
        help="export SRC, one of our checkpoints, to the official key names and layouts",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    configure_logging()
    if args.to_official:
        return _export(args)
    if pathlib.Path(args.src).suffix.lower() in GAN_SUFFIXES:
        return _convert_gan(args)

    def convert() -> str:
        config = resolve_config(args.config) if args.config else None
        return convert_checkpoint(args.src, args.dst, config, overwrite=args.overwrite).summary()

    return _run(convert, args.dst)


GAN_SUFFIXES = (".pkl", ".pt", ".pth")


def _run(work: Callable[[], str], written) -> int:
    """Print the work's summary and what it wrote, or its error in one line; a disk that fills up while DST is
    written too (the work reads SRC as well, so only the errors no read raises are taken for a failed write)."""
    try:
        with writing(written, "nothing was written (free space or choose another DST)", reads_too=True):
            summary = work()
    except (ValueError, FileNotFoundError, FileExistsError, CannotWrite) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary)
    print(f"wrote {written}")
    return 0


def _refuse_config(reason: str) -> int:
    print(f"error: --config does not apply to {reason}", file=sys.stderr)
    return 1


def _convert_gan(args) -> int:
    """GAN generators: NVIDIA network pickles (StyleGAN2-ADA, EG3D), rosinality / pSp / e4e .pt files."""
    from cdiff_jax.convert.gan import convert_gan

    if args.config:
        return _refuse_config("GAN files; their architecture is read from the file")
    return _run(lambda: convert_gan(args.src, args.dst, overwrite=args.overwrite), args.dst)


def _export(args) -> int:
    """Our checkpoint -> the official format (cdiff_jax.convert.export)."""
    from cdiff_jax.convert.export import export_checkpoint

    if args.config:
        return _refuse_config("--to-official; the architecture is the checkpoint's own config.json")
    return _run(lambda: export_checkpoint(args.src, args.dst, overwrite=args.overwrite).summary(), args.dst)


if __name__ == "__main__":
    sys.exit(main())

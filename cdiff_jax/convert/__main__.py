"""python -m cdiff_jax.convert SRC DST [--config CONFIG]: official checkpoint -> our checkpoint."""

import argparse
import pathlib
import sys

from cdiff_jax.config import SystemConfig, load_config
from cdiff_jax.convert.converter import convert_checkpoint
from cdiff_jax.convert.official_config import load_official_yaml


def resolve_config(spec: str) -> SystemConfig:
    """--config: one of ours (`FILE.py[:ARG]`, through `load_config`) or an official YAML."""
    if pathlib.Path(spec).suffix in (".yaml", ".yml"):
        return load_official_yaml(spec)
    return load_config(spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdiff_jax.convert",
        description="Convert an official Collaborative Diffusion checkpoint (.ckpt or .safetensors) "
        "into a cdiff_jax checkpoint directory (config.json + orbax params/).",
    )
    parser.add_argument("src", help="official checkpoint: {256,512}_{vae,mask,text,codiff_mask_text}.ckpt or "
                        ".safetensors; or a StyleGAN2 generator: NVIDIA .pkl, rosinality / pSp / e4e .pt")
    parser.add_argument("dst", help="output directory (written atomically)")
    parser.add_argument(
        "--config",
        help="architecture: one of ours (FILE.py[:ARG], e.g. released.py:512_codiff) or the official YAML "
        "it was trained with; default: the released config matching the detected type and resolution",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    if pathlib.Path(args.src).suffix.lower() in GAN_SUFFIXES:
        return _convert_gan(args)
    try:
        config = resolve_config(args.config) if args.config else None
        report = convert_checkpoint(args.src, args.dst, config, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0


GAN_SUFFIXES = (".pkl", ".pt", ".pth")


def _convert_gan(args) -> int:
    """GAN generators: NVIDIA network pickles (StyleGAN2-ADA, EG3D), rosinality / pSp / e4e .pt files."""
    from cdiff_jax.convert.gan import convert_gan

    if args.config:
        print("error: --config does not apply to GAN files; their architecture is read from the file", file=sys.stderr)
        return 1
    try:
        description = convert_gan(args.src, args.dst, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(description)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

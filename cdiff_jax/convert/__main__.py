"""python -m cdiff_jax.convert SRC DST [--config CONFIG]: official checkpoint -> our checkpoint."""

import argparse
import sys

from cdiff_jax.convert.converter import convert_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdiff_jax.convert",
        description="Convert an official Collaborative Diffusion checkpoint (.ckpt or .safetensors) "
        "into a cdiff_jax checkpoint directory (config.json + orbax params/).",
    )
    parser.add_argument("src", help="official checkpoint: {256,512}_{vae,mask,text,codiff_mask_text}.ckpt or .safetensors")
    parser.add_argument("dst", help="output directory (written atomically)")
    parser.add_argument(
        "--config",
        help="architecture: one of ours (FILE.py[:ARG], e.g. released.py:512_codiff) or the official YAML "
        "it was trained with; default: the released config matching the detected type and resolution",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        report = convert_checkpoint(args.src, args.dst, args.config, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

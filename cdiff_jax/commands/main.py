"""`cdiff COMMAND ...`: one console command for every program of the package.

The first argument picks the program and the rest goes to it unchanged, so `cdiff sample --help`
prints that program's own options. Each program is imported only when chosen: `cdiff --help`
starts without loading JAX.
"""

from __future__ import annotations

import importlib
import sys

from cdiff_jax import __version__

# name -> (module:function taking argv and returning an exit code, what it does)
COMMANDS = {
    "sample": ("cdiff_jax.commands.sample:main", "sample faces from a mask, a caption or both"),
    "edit": ("cdiff_jax.editing.run:main", "edit a real face by caption, mask or both (Imagic + collaboration)"),
    "train": (
        "cdiff_jax.commands.train:main",
        "train the autoencoder, an expert, the dynamic diffusers or a StyleGAN2",
    ),
    "convert": ("cdiff_jax.convert.__main__:main", "convert an official checkpoint into ours, or back (--to-official)"),
    "demo": ("cdiff_jax.app:main", "serve the interactive page on localhost: draw a mask, type a caption, sample"),
    "evaluate": (None, "evaluate on real or toy faces (default: the miniature evaluation); `cdiff evaluate --help`"),
}
# `cdiff evaluate [NAME] ...`: the evaluation programs; without a name, the miniature evaluation.
EVALUATIONS = {
    "miniature": ("cdiff_jax.evaluation.miniature:main", "each expert, equal weights and the learned maps, judged"),
    "samplers": ("cdiff_jax.evaluation.samplers:main", "each solver at fewer steps against 50-step DDIM, judged"),
    "weighting": ("cdiff_jax.evaluation.weighting:main", "which influence maps the training loss rewards"),
    "toy-edit": ("cdiff_jax.evaluation.toy_edit:main", "editing judged against the toy world's exact targets"),
    "ddgi": ("cdiff_jax.evaluation.ddgi_toy:main", "DDGI's GAN images against the diffusion samples, judged"),
    "ddgi3d": ("cdiff_jax.evaluation.ddgi_toy_3d:main", "DDGI-3D's views against the toy 3D world, judged"),
    "judges": ("cdiff_jax.evaluation.judges:main", "train the face parser and attribute classifier (the judges)"),
    "paper": ("cdiff_jax.evaluation.paper:main", "the papers' table on real faces: FID, CLIP score, masks, ..."),
    "fid": ("cdiff_jax.evaluation.fid:main", "FID between two image folders or statistics files, as pytorch-fid"),
}
DEFAULT_EVALUATION = "miniature"


def _usage(table: dict[str, tuple[str | None, str]], prog: str, intro: str) -> str:
    width = max(map(len, table))
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", intro, "", "commands:"]
    lines += [f"  {name.ljust(width)}  {about}" for name, (_, about) in table.items()]
    lines += ["", f"`{prog} COMMAND --help` shows a command's options."]
    return "\n".join(lines)


USAGE = _usage(COMMANDS, "cdiff", f"cdiff_jax {__version__}: Collaborative Diffusion in JAX.")
EVALUATE_USAGE = _usage(
    EVALUATIONS,
    "cdiff evaluate",
    f"Without a command, `cdiff evaluate ARGS...` runs `cdiff evaluate {DEFAULT_EVALUATION} ARGS...`.",
)


def _run(target: str, argv: list[str], prog: str) -> int:
    """Call `target` with `argv`; sys.argv[0] becomes `prog`, which argparse shows in the program's usage line."""
    module_name, _, function = target.partition(":")
    sys.argv = [prog, *argv]
    return getattr(importlib.import_module(module_name), function)(argv)


def _evaluate(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(EVALUATE_USAGE)
        return 0
    name, rest = (argv[0], argv[1:]) if argv and argv[0] in EVALUATIONS else (DEFAULT_EVALUATION, argv)
    return _run(EVALUATIONS[name][0], rest, f"cdiff evaluate {name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"cdiff_jax {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (`cdiff --help`)", file=sys.stderr
        )
        return 2
    if command == "evaluate":
        return _evaluate(rest)
    return _run(COMMANDS[command][0], rest, f"cdiff {command}")


if __name__ == "__main__":
    sys.exit(main())

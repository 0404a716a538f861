"""Training curves as a picture, drawn with PIL from the runs' metrics.jsonl (no plotting library).

    python -m cdiff_jax.train.curves runs/demo/autoencoder runs/demo/expert_text --out curves.png

One panel per run: the training loss per logged step (grey; the reconstruction term for the
autoencoder) with its running mean (blue) and the validation loss (orange dots), on a log scale
when the values span more than a factor of ten.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cdiff_jax import viz

PANEL = (420, 220)
MARGIN = (46, 18, 10, 26)  # left, top, right, bottom
COLOURS = {"train": (170, 170, 170), "smooth": (31, 119, 180), "val": (255, 127, 14), "axis": (0, 0, 0)}


def read_metrics(path: pathlib.Path, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values of `key`) of a metrics.jsonl; a missing file is empty."""
    if not path.is_file():
        return np.zeros(0), np.zeros(0)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return np.array([r["step"] for r in records], float), np.array([r[key] for r in records], float)


def running_mean(values: np.ndarray, window: int = 8) -> np.ndarray:
    out = np.cumsum(values)
    out[window:] = out[window:] - out[:-window]
    return out / np.minimum(np.arange(1, len(values) + 1), window)


def panel(run: pathlib.Path) -> Image.Image:
    train_file = run / "train" / "metrics.jsonl"
    # The autoencoder's total loss is a per-image sum; its reconstruction term is what validation reports.
    key = "rec_loss" if train_file.is_file() and '"rec_loss"' in train_file.read_text() else "loss"
    steps, loss = read_metrics(train_file, key)
    val_steps, val = read_metrics(run / "val" / "metrics.jsonl")
    image = Image.new("RGB", PANEL, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text(
        (MARGIN[0], 2), f"{run.name}: {key} (grey, blue: running mean), validation (orange)", fill=(0, 0, 0), font=font
    )
    if not len(steps):
        draw.text((MARGIN[0], PANEL[1] // 2), "no metrics", fill=(0, 0, 0), font=font)
        return image
    values = np.concatenate([loss, val]) if len(val) else loss
    lo, hi = float(values.min()), float(values.max())
    log = lo > 0 and hi / lo > 10
    f = (lambda v: np.log10(v)) if log else (lambda v: v)  # noqa: E731
    y_lo, y_hi = f(lo), f(hi) + 1e-12
    x_lo, x_hi = 0.0, float(max(steps.max(), val_steps.max() if len(val_steps) else 0))
    left, top, right, bottom = MARGIN[0], MARGIN[1], PANEL[0] - MARGIN[2], PANEL[1] - MARGIN[3]

    def xy(s, v):
        x = left + (right - left) * (s - x_lo) / max(x_hi - x_lo, 1)
        y = bottom - (bottom - top) * (f(v) - y_lo) / (y_hi - y_lo)
        return float(x), float(y)

    draw.rectangle((left, top, right, bottom), outline=COLOURS["axis"])
    draw.line([xy(s, v) for s, v in zip(steps, loss)], fill=COLOURS["train"], width=1)
    draw.line([xy(s, v) for s, v in zip(steps, running_mean(loss))], fill=COLOURS["smooth"], width=2)
    for s, v in zip(val_steps, val):
        x, y = xy(s, v)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS["val"])
    for v in (lo, hi):
        draw.text((2, xy(0, v)[1] - 6), f"{v:.3g}", fill=(0, 0, 0), font=font)
    draw.text((left, bottom + 4), "0", fill=(0, 0, 0), font=font)
    draw.text((right - 40, bottom + 4), f"step {int(x_hi)}", fill=(0, 0, 0), font=font)
    if log:
        draw.text((right - 40, top + 2), "log y", fill=(0, 0, 0), font=font)
    return image


def curves(runs: list[pathlib.Path], columns: int = 2) -> np.ndarray:
    panels = np.stack([np.asarray(panel(run)) for run in runs])
    return viz.grid(panels, cols=min(columns, len(runs)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (train.py --workdir)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    runs = [pathlib.Path(r) for r in args.runs]
    missing = [str(r) for r in runs if not (r / "train" / "metrics.jsonl").is_file()]
    if missing:
        print(f"error: no train/metrics.jsonl in {', '.join(missing)}; pass train.py work directories", file=sys.stderr)
        return 2
    viz.save_png(args.out, curves(runs, columns=math.ceil(math.sqrt(len(runs)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

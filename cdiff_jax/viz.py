"""Pictures a person would rather look at than read: image grids, influence heatmaps, overlays.

All writers go through `save_png`, which writes a temporary file and renames it into place.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from cdiff_jax.data.masks import colorize

# A perceptually ordered dark-blue -> teal -> yellow ramp for weights in [0, 1].
_RAMP = np.array([[20, 20, 80], [40, 90, 160], [30, 160, 150], [120, 200, 90], [250, 230, 60]], np.float64)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8, as the reference saves it: clip((x + 1) * 127.5)."""
    return np.clip((np.asarray(images, np.float64) + 1.0) * 127.5, 0, 255).astype(np.uint8)


def heatmap(weights: np.ndarray) -> np.ndarray:
    """Weights in [0, 1], [..., H, W] -> RGB uint8 [..., H, W, 3] on a fixed colour ramp."""
    w = np.clip(np.asarray(weights, np.float64), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(w).astype(int).clip(0, len(_RAMP) - 2)
    frac = (w - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).round().astype(np.uint8)


def overlay(images: np.ndarray, labels: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """Blend uint8 images [B, H, W, 3] with the mask colours (labels [h, w], resized nearest)."""
    h, w = images.shape[1:3]
    colours = np.asarray(Image.fromarray(colorize(labels)).resize((w, h), Image.NEAREST), np.float64)
    return ((1 - alpha) * images + alpha * colours[None]).round().astype(np.uint8)


def grid(images: np.ndarray, cols: int | None = None, col_labels: list[str] | None = None, pad: int = 2,
         row_labels: list[str] | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] (or [rows, cols, H, W, 3]) -> one uint8 picture, with optional column labels above
    and row labels to the left."""
    images = np.asarray(images)
    if images.ndim == 5:
        rows, cols = images.shape[:2]
        images = images.reshape((-1,) + images.shape[2:])
    else:
        cols = cols or len(images)
        rows = -(-len(images) // cols)
    h, w = images.shape[1:3]
    top = 14 if col_labels else 0
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(round(measure.textlength(label)) for label in row_labels) + pad if row_labels else 0
    canvas = np.full((top + rows * (h + pad) + pad, left + cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        y, x = top + pad + r * (h + pad), left + pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = image
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for c, label in enumerate((col_labels or [])[:cols]):
        draw.text((left + pad + c * (w + pad), 1), label, fill=(0, 0, 0))
    for r, label in enumerate((row_labels or [])[:rows]):
        draw.text((pad, top + pad + r * (h + pad) + h // 2 - 5), label, fill=(0, 0, 0))
    return np.asarray(picture)


def save_png(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def depth_picture(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """[..., H, W, 1] depths -> uint8 grey pictures, `near` white and `far` black."""
    level = np.clip((far - depth[..., 0]) / max(far - near, 1e-6), 0, 1)
    return np.repeat((level * 255).round().astype(np.uint8)[..., None], 3, axis=-1)

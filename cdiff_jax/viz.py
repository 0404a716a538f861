"""Pictures a person would rather look at than read: image grids, influence heatmaps with their colour scale,
overlays, captions.

All writers go through `save_png`, which writes a temporary file and renames it into place (a remote path,
gs://..., is written as one whole object instead: an object store shows it only once complete).
"""

from __future__ import annotations

import io
import os
import pathlib
import tempfile
import textwrap

import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from cdiff_jax.data.masks import colorize
from cdiff_jax.paths import is_remote

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
    return blend(images, mask_picture(labels, h)[None], alpha)


def mask_picture(labels: np.ndarray, size: int) -> np.ndarray:
    """A label map [h, w] in the CelebAMask-HQ colours, resized (nearest) to size x size."""
    return np.asarray(Image.fromarray(colorize(labels)).resize((size, size), Image.NEAREST))


def blend(images: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 images and colours of one shape (or broadcastable) -> their alpha mix, uint8."""
    mixed = (1 - alpha) * np.asarray(images, np.float64) + alpha * np.asarray(colours, np.float64)
    return mixed.round().astype(np.uint8)


def enlarge(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps [..., h, w] -> [..., size, size] by repeating cells (each latent cell covers a square of pixels)."""
    factor = size // maps.shape[-1]
    return np.repeat(np.repeat(maps, factor, axis=-1), factor, axis=-2)


def colour_scale(height: int, low: str = "0", high: str = "1", pad: int = 2) -> np.ndarray:
    """The heatmap ramp as a vertical bar, `high` at the top, with its end values written beside it."""
    bar = heatmap(np.linspace(1.0, 0.0, height)[:, None].repeat(10, axis=1))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(round(measure.textlength(label)) for label in (low, high))
    picture = Image.new("RGB", (10 + pad + text_width + pad, height + 10), (255, 255, 255))
    picture.paste(Image.fromarray(bar), (0, 5))
    draw = ImageDraw.Draw(picture)
    draw.text((10 + pad, 0), high, fill=(0, 0, 0))
    draw.text((10 + pad, height - 5), low, fill=(0, 0, 0))
    return np.asarray(picture)


def titled(
    picture: np.ndarray, title: str, right: np.ndarray | None = None, thumbnail: np.ndarray | None = None, pad: int = 4
) -> np.ndarray:
    """`picture` under a header (an optional thumbnail, then `title` wrapped to the picture's width) and with an
    optional panel (e.g. a colour scale) to its right, on white."""
    picture = np.asarray(picture)
    h, w = picture.shape[:2]
    thumb_w, thumb_h = (thumbnail.shape[1] + pad, thumbnail.shape[0]) if thumbnail is not None else (0, 0)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    chars = max(8, int((w - thumb_w) / max(measure.textlength("abcdefghij") / 10, 1)))
    lines = textwrap.wrap(title, chars) or [""]
    header = max(thumb_h, 11 * len(lines)) + pad
    right_w = right.shape[1] + pad if right is not None else 0
    canvas = Image.new(
        "RGB", (w + right_w + pad, header + max(h, right.shape[0] if right is not None else 0) + pad), (255, 255, 255)
    )
    if thumbnail is not None:
        canvas.paste(Image.fromarray(np.asarray(thumbnail, np.uint8)), (pad, pad // 2))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad + thumb_w, pad // 2 + 11 * i), line, fill=(0, 0, 0))
    canvas.paste(Image.fromarray(picture), (0, header))
    if right is not None:
        top = header + max(0, (h - right.shape[0]) // 2)
        canvas.paste(Image.fromarray(np.asarray(right, np.uint8)), (w + pad, top))
    return np.asarray(canvas)


def influence_picture(samples: np.ndarray, maps: np.ndarray, step_labels: list[str], name: str) -> np.ndarray:
    """One modality's influence: a row per sample with the sample, its mean map over the steps laid over it, and
    the map at each shown step; titled, with the colour scale. `samples` uint8 [B, H, W, 3]; `maps` the softmax
    weights, [steps, B, h, w] in [0, 1]."""
    size = samples.shape[1]
    steps = heatmap(enlarge(maps, size)).swapaxes(0, 1)  # [B, steps, H, W, 3]
    mean = blend(samples, heatmap(enlarge(maps.mean(axis=0), size)), alpha=0.5)
    rows = np.concatenate([samples[:, None], mean[:, None], steps], axis=1)
    picture = grid(rows, col_labels=["sample", "mean"] + list(step_labels))
    title = f"influence of the {name} expert per pixel (weights sum to 1 over the modalities), by step t"
    return titled(picture, title, right=colour_scale(min(picture.shape[0] - 20, 4 * size)))


def grid(
    images: np.ndarray,
    cols: int | None = None,
    col_labels: list[str] | None = None,
    pad: int = 2,
    row_labels: list[str] | None = None,
) -> np.ndarray:
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
    if is_remote(path):
        path = epath.Path(path)
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        return path
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

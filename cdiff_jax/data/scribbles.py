"""Scribbles (line drawings of a face, DDGI's second visual input): loading, tokens, and toy ones.

A scribble is a binary stroke map: white lines on black, as ControlNet-style edge maps are drawn.
Datasets store it as uint8 ``[SCRIBBLE_SIZE, SCRIBBLE_SIZE]`` (255 = stroke). The scribble encoder
reads ``[len(widths), size*size]``: the drawing reduced to ``size`` (a cell is a stroke if any pixel
under it is, so thin lines survive downsizing), then thickened to each stroke width, one token per
width (see `cdiff_jax.config.ScribbleEncoderConfig`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

import numpy as np
from PIL import Image

from cdiff_jax.data.images import open_image

SCRIBBLE_SIZE = 64  # the stored side length: the toy faces' resolution, twice the default token map

ScribbleSource = str | os.PathLike | np.ndarray | Image.Image

_HELP = "draw white lines (>= 128) on a black background, as a grayscale or RGB PNG"


def scribble_from_labels(labels: np.ndarray) -> np.ndarray:
    """uint8 line drawing (255 on the boundaries between face-parsing classes) of a label map.

    A pixel is a stroke where its class differs from its right or lower neighbour, so every
    boundary is one pixel wide and drawn on its upper-left side.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be a 2-D [H, W] array of class ids, got shape {labels.shape}")
    edges = np.zeros(labels.shape, bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return np.where(edges, np.uint8(255), np.uint8(0))


def load_strokes(source: ScribbleSource) -> np.ndarray:
    """bool [H, W] strokes of a scribble given as a path, PIL image or [H, W] array (strokes >= 128 or True).

    A file or image that is mostly white is refused: it is almost surely drawn black on white.
    """
    what = "scribble"
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        what = f"scribble {path}"
        try:
            source = open_image(path, what, "L")
        except ValueError as e:
            raise ValueError(f"{e}; {_HELP}") from None
    elif not isinstance(source, (np.ndarray, Image.Image)):
        raise TypeError(f"scribble source must be a path, PIL image or numpy array, got {type(source).__name__}")
    values = np.asarray(source.convert("L") if isinstance(source, Image.Image) else source)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"{what} must be a non-empty 2-D [H, W] map, got shape {values.shape}; {_HELP}")
    strokes = values if values.dtype == bool else values >= 128
    if not isinstance(source, np.ndarray) and strokes.mean() > 0.5:  # a drawing in black on white
        raise ValueError(f"{what} is mostly white ({strokes.mean():.0%} of its pixels); {_HELP} (invert it)")
    return strokes


def resize_strokes(strokes: np.ndarray, size: int) -> np.ndarray:
    """bool [size, size]: a cell is a stroke if any stroke pixel lies under it (PIL box filter)."""
    img = Image.fromarray(np.where(strokes, np.uint8(255), np.uint8(0)))
    return np.asarray(img.resize((size, size), Image.BOX)) > 0


def thicken(strokes: np.ndarray, width: int) -> np.ndarray:
    """Strokes grown to `width` (odd) pixels: the maximum over a width x width square."""
    r = width // 2
    if r == 0:
        return strokes
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(strokes, r), (width, width))
    return windows.any(axis=(-2, -1))


def scribble_tokens(source: ScribbleSource, size: int, widths: tuple[int, ...]) -> np.ndarray:
    """float32 [len(widths), size*size]: the scribble at `size`, one row-major token per stroke width."""
    strokes = resize_strokes(load_strokes(source), size)
    return np.stack([thicken(strokes, w).reshape(-1) for w in widths]).astype(np.float32)


def scribbles_to_tokens(sources: Iterable[ScribbleSource], size: int, widths: tuple[int, ...]) -> np.ndarray:
    """Batch of scribbles (paths, images or arrays) -> float32 [B, len(widths), size*size]."""
    items = list(sources)
    if not items:
        raise ValueError("no scribbles given")
    return np.stack([scribble_tokens(s, size, widths) for s in items])

"""PyTorch tensor layouts <-> ours, for every reader of official weights (converter, LPIPS, ...) and the export.

torch stores a convolution as [O, I, kh, kw] and a linear map as [O, I]; Flax wants [kh, kw, I, O]
and [I, O]. Only leaves named `kernel` change layout: biases, norm scales and embeddings keep theirs.
"""

from __future__ import annotations

import numpy as np


def to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """Official tensor -> our layout, by our leaf name: only `kernel`s change layout."""
    if leaf != "kernel":
        return array
    if array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))  # conv [O, I, h, w] -> [h, w, I, O]
    return array.T  # linear [O, I] -> [I, O]


def to_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """Our tensor -> the official layout: the inverse of `to_flax_layout`'s axis permutation, read off a probe with
    distinct axis lengths, so the two directions cannot disagree."""
    probe = np.empty(tuple(range(2, 2 + array.ndim)), np.uint8)
    moved = [probe.shape.index(n) for n in to_flax_layout(probe, leaf).shape]
    return np.transpose(array, np.argsort(moved))

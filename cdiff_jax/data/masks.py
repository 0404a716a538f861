"""CelebAMask-HQ face-parsing label maps: loading, the reference 32x32 one-hot, and colouring.

The mask expert is conditioned on ``[B, 19, 1024]``: one token per class, each carrying that
class's 32x32 binary map. The official ``generate.py`` builds it from a palette PNG with
``resize((32, 32), Image.NEAREST)`` -> ``getdata()`` -> ``one_hot(19)`` -> transpose; the helpers
here reproduce that exactly and also accept the other forms users actually have (grayscale id
PNGs, colour-painted RGB masks, numpy arrays), rejecting anything ambiguous with a clear error.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterable

import numpy as np
from PIL import Image

from cdiff_jax.data.images import UnreadableImage, open_image

CLASS_NAMES = (
    "background",
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
NUM_CLASSES = 19
MASK_SIZE = 32

PALETTE = np.array(
    [
        [0, 0, 0],
        [204, 0, 0],
        [76, 153, 0],
        [204, 204, 0],
        [51, 51, 255],
        [204, 0, 204],
        [0, 255, 255],
        [255, 204, 204],
        [102, 51, 0],
        [255, 0, 0],
        [102, 204, 0],
        [255, 255, 0],
        [0, 0, 153],
        [0, 0, 204],
        [255, 51, 153],
        [0, 204, 204],
        [0, 51, 0],
        [255, 153, 51],
        [0, 204, 0],
    ],
    dtype=np.uint8,
)
PALETTE.flags.writeable = False
# Half the distance between the two closest class colours (black and neck_l's (0, 51, 0): 51), so a colour is near
# at most one class: what a drawn mask's colours may be off by (brush edges, a browser's colour handling).
SNAP_DISTANCE = 25

LabelSource = str | os.PathLike | np.ndarray | Image.Image

_HELP = (
    "use a label PNG whose pixel values are class ids 0..18 (palette or grayscale) "
    "or an RGB mask painted in the CelebAMask-HQ colours (cdiff_jax.data.masks.PALETTE)"
)


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_PALETTE_CODES = _rgb_codes(PALETTE)


def _check_labels(labels: np.ndarray, what: str = "label map") -> np.ndarray:
    """Validate an integer [H, W] class-id array and return it as uint8."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [H, W] array of class ids, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{what} is empty (shape {labels.shape})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class ids 0..{NUM_CLASSES - 1}, got dtype {labels.dtype}")
    bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(f"{what} has class ids outside 0..{NUM_CLASSES - 1}: {shown}; {_HELP}")
    return labels.astype(np.uint8)


def _rgb_to_labels(rgb: np.ndarray, what: str) -> np.ndarray:
    """Map palette colours to class ids; unknown colours are an error, never a guess."""
    codes = _rgb_codes(rgb)
    uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    lut = np.full(uniq.shape, -1, np.int64)
    for cls, code in enumerate(_PALETTE_CODES):
        lut[uniq == code] = cls
    if (lut < 0).any():
        off = np.flatnonzero(lut < 0)
        off = off[np.argsort(-counts[off], kind="stable")]
        shown = ", ".join(f"({uniq[i] >> 16}, {(uniq[i] >> 8) & 255}, {uniq[i] & 255}) x{counts[i]}" for i in off[:5])
        more = f" and {off.size - 5} more" if off.size > 5 else ""
        raise ValueError(
            f"{what} has {int(counts[off].sum())} pixels in colours that are not CelebAMask-HQ classes: "
            f"{shown}{more}; {_HELP} (anti-aliased or JPEG-compressed masks are not supported)"
        )
    return lut[inverse.reshape(codes.shape)].astype(np.uint8)


def _image_to_labels(img: Image.Image, what: str) -> np.ndarray:
    if img.mode in ("P", "PA", "L", "LA", "I", "I;16"):
        arr = np.asarray(img)
        return _check_labels(arr[..., 0] if arr.ndim == 3 else arr, what)
    if img.mode in ("RGB", "RGBA"):
        return _rgb_to_labels(np.asarray(img)[..., :3], what)
    raise ValueError(f"{what} has unsupported image mode {img.mode!r}; {_HELP}")


def load_label_map(source: LabelSource) -> np.ndarray:
    """Load a face-parsing label map as uint8 [H, W] class ids from a path, PIL image or array.

    Palette PNGs are read by index (as the reference does), grayscale PNGs by value, and RGB(A)
    PNGs by exact palette colour.
    """
    if isinstance(source, np.ndarray):
        return _check_labels(source)
    if isinstance(source, Image.Image):
        return _image_to_labels(source, "mask image")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"mask source must be a path, PIL image or numpy array, got {type(source).__name__}")
    path = pathlib.Path(source)
    try:
        img = open_image(path, f"mask {path}")
    except UnreadableImage as e:
        raise ValueError(f"{e}; {_HELP}") from None
    return _image_to_labels(img, f"mask {path}")


def snap_to_palette(rgb: np.ndarray, distance: float = SNAP_DISTANCE) -> np.ndarray:
    """uint8 RGB [H, W, 3] with each colour within `distance` (Euclidean, in 0..255 units) of a class colour
    replaced by that colour; the farther ones are left as they are, for `load_label_map` to refuse by name."""
    rgb = np.asarray(rgb, np.uint8)
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    gaps = np.linalg.norm(colours[:, None].astype(np.float64) - PALETTE[None].astype(np.float64), axis=-1)
    snapped = np.where((gaps.min(axis=1) <= distance)[:, None], PALETTE[gaps.argmin(axis=1)], colours)
    return snapped[inverse.reshape(-1)].reshape(rgb.shape)


def resize_label_map(labels: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """Resize to ``size x size`` with PIL NEAREST on a mode 'L' image, exactly as the reference.

    PIL's nearest sampling takes pixel centres (128 -> 32 picks source pixel 4i+2), which a naive
    ``labels[::4, ::4]`` would not reproduce.
    """
    labels = _check_labels(labels)
    return np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST), dtype=np.uint8)


def one_hot_mask(labels: np.ndarray) -> np.ndarray:
    """float32 [19, H*W]: one token per class holding its row-major binary map."""
    labels = _check_labels(labels)
    return np.ascontiguousarray(np.eye(NUM_CLASSES, dtype=np.float32)[labels.reshape(-1)].T)


def masks_to_onehot(masks: np.ndarray | Iterable[LabelSource], size: int = MASK_SIZE) -> np.ndarray:
    """Batch of label maps (array [B, H, W] or list of paths/arrays/images) -> float32 [B, 19, size*size]."""
    items = list(masks)
    if not items:
        raise ValueError("no masks given")
    return np.stack([one_hot_mask(resize_label_map(load_label_map(m), size)) for m in items])


def colorize(labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB rendering with the CelebAMask-HQ colours (for previews and overlays)."""
    return PALETTE[_check_labels(labels)]


def save_label_png(path: str | os.PathLike, labels: np.ndarray) -> pathlib.Path:
    """Write a palette PNG (index = class id, palette = PALETTE), atomically via a temp file + rename.

    This is the format the reference reads, and it also views correctly in any image viewer.
    """
    labels = _check_labels(labels)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels)
    img.putpalette(PALETTE.reshape(-1).tolist())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path

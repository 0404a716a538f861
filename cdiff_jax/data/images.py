"""Reading a user's image file: one way, bounded, and every failure one `ValueError` line.

PIL reads the size from the header before decoding, so an image too large to be a face or a mask (a
"decompression bomb": a small PNG that declares 30000x30000 pixels) is refused before any pixel is
decoded; PIL's own bomb error and warning never reach the user.
"""

from __future__ import annotations

import os
import pathlib
import warnings

from PIL import Image, UnidentifiedImageError

# Faces and masks here are at most 1024x1024; 4096x4096 leaves room for scans and photographs.
MAX_PIXELS = 4096 * 4096


class UnreadableImage(ValueError):
    """The file is not an image PIL can decode (callers add what kind of image they expected)."""


def open_image(path: str | os.PathLike, what: str, mode: str | None = None) -> Image.Image:
    """The decoded image at `path` (converted to `mode` when given); `what` names it in errors ("mask x.png")."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file; pass the path of an existing image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ValueError(
                        f"{what} is {img.width}x{img.height} pixels, more than any face or mask "
                        f"(at most {MAX_PIXELS} pixels); resize it"
                    )
                img.load()
                return img.convert(mode) if mode else img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(
            f"{what} declares more pixels than any face or mask (at most {MAX_PIXELS}); resize it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL raises SyntaxError for some broken files
        raise UnreadableImage(f"cannot read {what} as an image ({err})") from None

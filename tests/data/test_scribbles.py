"""Scribbles: line drawings from label maps, user drawings to stroke tokens, and clear errors."""

import numpy as np
import pytest
from PIL import Image

from cdiff_jax.data.scribbles import (
    load_strokes,
    resize_strokes,
    scribble_from_labels,
    scribble_tokens,
    scribbles_to_tokens,
    thicken,
)


def test_label_boundaries_are_one_pixel_lines():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 3:6] = 4  # a 3x3 square
    drawing = scribble_from_labels(labels)
    assert drawing.dtype == np.uint8 and set(np.unique(drawing)) == {0, 255}
    expected = np.zeros((8, 8), bool)
    expected[1, 3:6] = True  # above the square (upper side of the top boundary)
    expected[4, 3:6] = True  # the square's bottom row (upper side of the bottom boundary)
    expected[2:5, 2] = True  # left of the square
    expected[2:5, 5] = True  # the square's right column
    np.testing.assert_array_equal(drawing == 255, expected)
    assert not scribble_from_labels(np.full((5, 5), 3, np.uint8)).any()  # one class: no line


def test_downsizing_keeps_thin_lines_and_thicken_grows_them():
    strokes = np.zeros((64, 64), bool)
    strokes[:, 17] = True  # a one-pixel vertical line at an odd column
    small = resize_strokes(strokes, 32)
    assert small[:, 8].all() and small.sum() == 32  # kept, one cell wide
    thick = thicken(small, 3)
    assert thick[:, 7:10].all() and thick.sum() == 3 * 32
    np.testing.assert_array_equal(thicken(small, 1), small)


def test_tokens_one_per_width_from_paths_images_and_arrays(tmp_path):
    drawing = np.zeros((64, 64), np.uint8)
    drawing[10, 5:40] = 255
    Image.fromarray(drawing).save(tmp_path / "s.png")
    rgb = Image.fromarray(np.repeat(drawing[..., None], 3, axis=2))
    tokens = scribbles_to_tokens([tmp_path / "s.png", rgb, drawing, drawing == 255], 32, (1, 3, 5))
    assert tokens.shape == (4, 3, 32 * 32) and tokens.dtype == np.float32
    for other in tokens[1:]:
        np.testing.assert_array_equal(other, tokens[0])
    widths = tokens[0].reshape(3, 32, 32).sum(axis=(1, 2))
    assert 0 < widths[0] < widths[1] < widths[2]
    thin = scribble_tokens(drawing, 32, (1,))[0].reshape(32, 32)
    np.testing.assert_array_equal(thin, resize_strokes(drawing > 0, 32))


def test_bad_scribbles_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scribble .*missing.png: no such file"):
        load_strokes(tmp_path / "missing.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "white.png")
    with pytest.raises(ValueError, match="mostly white.*white lines"):
        load_strokes(tmp_path / "white.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read scribble"):
        load_strokes(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="2-D"):
        load_strokes(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="no scribbles"):
        scribbles_to_tokens([], 32, (1,))
    with pytest.raises(ValueError) as err:
        load_strokes(tmp_path / "white.png")
    assert "\n" not in str(err.value)

"""Reading a user's image: decoded when sane, one ValueError line when not, nothing decoded past the size bound."""

import numpy as np
import pytest
from conftest import png_header_only
from PIL import Image

from cdiff_jax.data.images import MAX_PIXELS, UnreadableImage, open_image


def test_a_sane_image_is_decoded_and_converted(tmp_path):
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(tmp_path / "a.png")
    img = open_image(tmp_path / "a.png", "mask a.png", "RGB")
    assert img.mode == "RGB" and img.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(img)[..., 0], np.arange(48).reshape(6, 8))


@pytest.mark.parametrize("side", [30000, 5000])  # above PIL's own bomb limit, and above ours only
def test_a_declared_size_beyond_any_face_is_refused_before_decoding(tmp_path, side):
    png_header_only(tmp_path / "bomb.png", side, side)
    assert side * side > MAX_PIXELS
    with pytest.raises(ValueError, match=r"^mask bomb.png .*(pixels|more pixels).*resize it$") as err:
        open_image(tmp_path / "bomb.png", "mask bomb.png")
    assert not isinstance(err.value, UnreadableImage) and "\n" not in str(err.value)


def test_missing_and_broken_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_image(tmp_path / "none.png", "mask none.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(UnreadableImage, match="^cannot read mask junk.png as an image"):
        open_image(tmp_path / "junk.png", "mask junk.png")

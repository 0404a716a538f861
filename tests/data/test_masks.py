"""Mask preprocessing must reproduce the official generate.py pipeline bit-for-bit."""

import numpy as np
import pytest
from PIL import Image

from cdiff_jax.data import masks as M


@pytest.fixture(scope="module")
def ref(fixtures_root):
    d = np.load(fixtures_root / "mask_unet" / "io.npz")
    return {k: d[k] for k in ("label_map_128", "mask_32", "mask_onehot")}


def test_constants():
    assert len(M.CLASS_NAMES) == M.NUM_CLASSES == 19
    assert M.CLASS_NAMES[0] == "background" and M.CLASS_NAMES[13] == "hair" and M.CLASS_NAMES[18] == "cloth"
    assert M.PALETTE.shape == (19, 3) and M.PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in M.PALETTE.tolist()}) == 19  # colours must be unambiguous


def test_array_path_matches_reference(ref):
    for lm, m32, oh in zip(ref["label_map_128"], ref["mask_32"], ref["mask_onehot"]):
        r = M.resize_label_map(M.load_label_map(lm))
        assert r.dtype == np.uint8 and r.shape == (32, 32)
        np.testing.assert_array_equal(r, m32)
        np.testing.assert_array_equal(r, lm[2::4, 2::4])  # the documented 4i+2 sampling
        h = M.one_hot_mask(r)
        assert h.dtype == np.float32 and h.shape == (19, 1024)
        np.testing.assert_array_equal(h, oh)
    batch = M.masks_to_onehot(ref["label_map_128"])
    assert batch.shape == (2, 19, 1024) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, ref["mask_onehot"])


def test_palette_png_roundtrip(ref, tmp_path):
    paths = [M.save_label_png(tmp_path / f"m{i}.png", lm) for i, lm in enumerate(ref["label_map_128"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.png", "m1.png"]  # no temp files left
    with Image.open(paths[0]) as img:
        assert img.mode == "P"
        assert img.getpalette()[: 19 * 3] == M.PALETTE.reshape(-1).tolist()
    for p, lm in zip(paths, ref["label_map_128"]):
        np.testing.assert_array_equal(M.load_label_map(p), lm)
        np.testing.assert_array_equal(M.load_label_map(str(p)), lm)
    np.testing.assert_array_equal(M.masks_to_onehot(paths), ref["mask_onehot"])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_rgb_and_gray_png(ref, tmp_path, mode):
    paths = []
    for i, lm in enumerate(ref["label_map_128"]):
        if mode == "L":
            img = Image.fromarray(lm.astype(np.uint8))
        else:
            img = Image.fromarray(M.colorize(lm)).convert(mode)
        assert img.mode == mode
        img.save(tmp_path / f"m{i}.png")
        paths.append(tmp_path / f"m{i}.png")
        np.testing.assert_array_equal(M.load_label_map(paths[-1]), lm)
    np.testing.assert_array_equal(M.masks_to_onehot(paths), ref["mask_onehot"])


def test_colorize():
    lm = np.arange(19, dtype=np.int64).reshape(1, 19)
    np.testing.assert_array_equal(M.colorize(lm)[0], M.PALETTE)


def test_out_of_range_labels(tmp_path):
    lm = np.zeros((8, 8), np.int32)
    lm[0, 0], lm[1, 1] = 19, -1
    with pytest.raises(ValueError, match=r"outside 0\.\.18: -1, 19"):
        M.load_label_map(lm)
    img = Image.fromarray(np.full((8, 8), 25, np.uint8))
    img.putpalette(M.PALETTE.reshape(-1).tolist())
    img.save(tmp_path / "p.png")
    with pytest.raises(ValueError, match="25"):
        M.load_label_map(tmp_path / "p.png")


def test_off_palette_colour(tmp_path):
    rgb = M.colorize(np.ones((8, 8), np.uint8))
    rgb[:2, :3] = (1, 2, 3)
    rgb[7, 7] = (250, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"7 pixels.*\(1, 2, 3\) x6, \(250, 0, 0\) x1.*PALETTE"):
        M.load_label_map(tmp_path / "bad.png")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        M.load_label_map(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        M.load_label_map(tmp_path / "notes.png")


@pytest.mark.parametrize(
    "arr, msg",
    [
        (np.zeros((4, 4), np.float32), "integer"),
        (np.zeros((2, 4, 4), np.int32), "2-D"),
        (np.zeros((4, 4), bool), "integer"),
        (np.zeros((0, 4), np.int32), "empty"),
    ],
)
def test_bad_arrays(arr, msg):
    with pytest.raises(ValueError, match=msg):
        M.load_label_map(arr)


def test_snap_to_palette_takes_near_colours_and_leaves_far_ones():
    """A drawn mask's rule: within SNAP_DISTANCE of a class colour is that class (never two: the distance is under
    half the closest pair's), anything farther is kept for load_label_map to refuse."""
    palette = M.PALETTE.astype(np.float64)
    gaps = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
    assert M.SNAP_DISTANCE < gaps[gaps > 0].min() / 2
    labels = np.arange(19, dtype=np.uint8).reshape(1, 19).repeat(3, axis=0)
    exact = M.colorize(labels)
    inward = np.where(exact < 128, 1, -1)  # shifts that stay inside 0..255
    shifted = exact.astype(np.int64)
    shifted[0] += inward[0] * [15, 15, 14]  # 25.4 units off: too far from any class colour
    shifted[1] += inward[1] * [14, 14, 14]  # 24.2 units off: that class
    snapped = M.snap_to_palette(shifted.astype(np.uint8))
    np.testing.assert_array_equal(snapped[0], shifted[0])
    np.testing.assert_array_equal(snapped[1:], exact[1:])
    np.testing.assert_array_equal(M.load_label_map(Image.fromarray(snapped[1:])), labels[1:])
    with pytest.raises(ValueError, match="not CelebAMask-HQ classes"):
        M.load_label_map(Image.fromarray(snapped))

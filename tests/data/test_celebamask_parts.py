"""Merging CelebAMask-HQ's part images into label maps: g_mask.py's rule (class order, later part on top,
OpenCV's first channel), resumable, and the faces without parts reported."""

import numpy as np
from PIL import Image

from cdiff_jax.data import celebamask_parts as parts
from cdiff_jax.data.masks import CLASS_NAMES, load_label_map

SIZE = parts.PART_SIZE


def _part(anno, face, name, box, mode="L"):
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    top, left, bottom, right = box
    image[top:bottom, left:right] = (0, 0, 255) if mode == "RGB" else 255
    path = parts.part_path(anno, face, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image if mode == "RGB" else image[..., 0], mode).save(path)


def test_parts_paint_in_class_order_and_later_parts_win(tmp_path):
    anno, out = tmp_path / "anno", tmp_path / "mask"
    _part(anno, 0, "skin", (0, 0, 300, 300))
    _part(anno, 0, "nose", (100, 100, 200, 200))  # over the skin: nose is the later class
    _part(anno, 0, "cloth", (400, 0, 512, 512), mode="RGB")  # only the blue channel is set
    _part(anno, 2001, "hair", (0, 0, 10, 10))  # folder 1 holds faces 2000-3999
    missing = parts.merge_all(anno, out, [0, 1, 2001])
    assert missing == [1] and not (out / "1.png").exists()
    labels = load_label_map(out / "0.png")
    assert labels.shape == (SIZE, SIZE)
    assert labels[50, 50] == CLASS_NAMES.index("skin") and labels[150, 150] == CLASS_NAMES.index("nose")
    assert labels[450, 10] == CLASS_NAMES.index("cloth") and labels[350, 350] == 0
    assert load_label_map(out / "2001.png")[5, 5] == CLASS_NAMES.index("hair")

    before = (out / "0.png").stat().st_mtime_ns
    assert parts.merge_all(anno, out, [0, 1]) == [1]  # a rerun keeps what was written
    assert (out / "0.png").stat().st_mtime_ns == before


def test_bad_input_is_one_line(tmp_path, capsys):
    assert parts.main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no folder 0" in capsys.readouterr().err
    anno = tmp_path / "anno"
    path = parts.part_path(anno, 0, "skin")
    path.parent.mkdir(parents=True)
    Image.new("L", (64, 64)).save(path)
    assert parts.main([str(anno), str(tmp_path / "out"), "--faces", "1"]) == 2
    err = capsys.readouterr().err
    assert "is 64x64, not 512x512" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()

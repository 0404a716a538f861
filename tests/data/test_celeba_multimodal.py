"""The CelebA-HQ multi-modal TFDS builder, on a tiny dataset written in the official layout."""

import json
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from cdiff_jax.data.celeba_multimodal import BadExampleError, CelebAMultiModal, build_dataset, data_sources, main
from cdiff_jax.data.masks import one_hot_mask, resize_label_map, save_label_png
from cdiff_jax.data.pipeline import make_loader
from cdiff_jax.data.scribbles import SCRIBBLE_SIZE, scribble_from_labels

# JSON order differs from name order, so "the last keys are the test split" is really about key order.
ORDER = [3, 0, 7, 1, 5, 2, 6, 4]
TEST_SIZE = 2
RES = 64


def _str(s):
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value):
    return b"J" + struct.pack("<i", value)


def _ints(*values):
    return b"(" + b"".join(map(_int, values)) + b"t"


def write_tensor_pt(path, tensor):
    """``torch.save`` of a 2-D LongTensor, laid out as the reference's transposed one-hot: strides (1, rows).

    Protocol-2 opcodes as torch writes them: a persistent-id storage and ``_rebuild_tensor_v2``.
    """
    rows, cols = tensor.shape
    storage = b"(" + _str("storage") + b"ctorch\nLongStorage\n" + _str("0") + _str("cpu") + _int(tensor.size) + b"tQ"
    hooks = b"ccollections\nOrderedDict\n)R"
    args = storage + _int(0) + _ints(rows, cols) + _ints(1, rows) + b"\x89" + hooks
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR.")
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/data/0", np.ascontiguousarray(tensor.T, dtype="<i8").tobytes())
        archive.writestr("archive/version", b"3\n")


def write_manual_dir(root, rng):
    """8 examples: even ids JPEG + ``.pt`` mask, odd ids PNG + label-PNG mask; id 5 is 128 px (resized).

    Returns ``{name: (expected image, expected 32x32 labels, caption)}`` in JSON order.
    """
    for sub in ("image", "mask", "text"):
        (root / sub).mkdir(parents=True)
    expected = {}
    for i in ORDER:
        size = 128 if i == 5 else RES
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        name = f"{i}.jpg"
        if i % 2 == 0:
            Image.fromarray(pixels).save(root / "image" / name, quality=95)
            with Image.open(root / "image" / name) as img:
                image = np.asarray(img.convert("RGB"))
            labels = rng.integers(0, 19, (32, 32)).astype(np.uint8)
            write_tensor_pt(root / "mask" / f"{i}.pt", np.asarray(one_hot_mask(labels), np.int64))
        else:
            Image.fromarray(pixels).save(root / "image" / f"{i}.png")
            image = pixels
            if size != RES:
                image = np.asarray(Image.fromarray(pixels).resize((RES, RES), Image.BICUBIC))
            full = rng.integers(0, 19, (64, 64)).astype(np.uint8)
            save_label_png(root / "mask" / f"{i}.png", full)
            labels = resize_label_map(full, 32)
        caption = f"This Man has beard of length {i}. He is in his Thirties."
        expected[name] = (image, labels, caption)
    captions = {name: {"Beard_and_Age": caption} for name, (_, _, caption) in expected.items()}
    (root / "text" / "captions_hq_beard_and_age_2022-08-19.json").write_text(json.dumps(captions))
    return expected


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    expected = write_manual_dir(root / "manual", np.random.default_rng(0))
    builder = build_dataset(root / "manual", root / "tfds", resolution=RES, test_size=TEST_SIZE)
    return builder, data_sources(root / "tfds", resolution=RES, test_size=TEST_SIZE), expected


def test_splits_follow_caption_key_order(built):
    builder, sources, expected = built
    names = list(expected)
    assert set(sources) == {"train", "test"}
    assert [ex["name"].decode() for ex in sources["train"]] == names[:-TEST_SIZE]
    assert [ex["name"].decode() for ex in sources["test"]] == names[-TEST_SIZE:]
    assert builder.info.splits["train"].num_examples == len(names) - TEST_SIZE
    assert builder.bad_examples == []


def test_example_contents(built):
    _, sources, expected = built
    for split in ("train", "test"):
        for ex in sources[split]:
            image, labels, caption = expected[ex["name"].decode()]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (RES, RES, 3)
            np.testing.assert_array_equal(ex["image"], image, err_msg=str(ex["name"]))
            assert ex["mask"].dtype == np.uint8
            np.testing.assert_array_equal(ex["mask"], labels, err_msg=str(ex["name"]))
            assert ex["caption"] == caption.encode()  # TFDS decodes Text features to UTF-8 bytes
            # No scribble/ folder: the stand-in drawing of the mask's class boundaries.
            assert ex["scribble"].dtype == np.uint8 and ex["scribble"].shape == (SCRIBBLE_SIZE, SCRIBBLE_SIZE)
            np.testing.assert_array_equal(ex["scribble"], scribble_from_labels(resize_label_map(labels, SCRIBBLE_SIZE)))


def test_loader_over_tfds_source(built):
    _, sources, _ = built
    batch = next(iter(make_loader(sources["train"], global_batch=3, seed=0, process_index=0, process_count=1)))
    assert batch["image"].shape == (3, RES, RES, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (3, 19, 1024) and batch["tokens"].shape == (3, 77)
    assert batch["scribble"].shape == (3, 3, 1024) and batch["scribble"].dtype == np.float32
    by_image = {ex["image"].tobytes(): ex for ex in sources["train"]}
    for image, mask in zip(batch["image"], batch["mask"]):
        ex = by_image[np.round((image + 1) * 127.5).astype(np.uint8).tobytes()]
        np.testing.assert_array_equal(mask, one_hot_mask(ex["mask"]))


def test_data_sources_needs_a_prepared_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m cdiff_jax.data.celeba_multimodal"):
        data_sources(tmp_path, resolution=RES, test_size=TEST_SIZE)


# --- Bad examples: a clear error naming the example, or skipped and counted.


def _break(root, case):
    if case == "missing image":
        (root / "image" / "7.png").unlink()
        return "7.jpg", "missing image"
    if case == "wrong mask shape":
        write_tensor_pt(root / "mask" / "0.pt", np.eye(19, 1000, dtype=np.int64))
        return "0.jpg", "[19, 1000]"
    if case == "not one-hot":
        write_tensor_pt(root / "mask" / "6.pt", np.ones((19, 1024), np.int64))
        return "6.jpg", "not one-hot"
    if case == "missing scribble":  # with a scribble/ folder, every example needs its drawing
        (root / "scribble").mkdir()
        for i in ORDER:
            if i != 1:
                Image.fromarray(np.zeros((RES, RES), np.uint8)).save(root / "scribble" / f"{i}.png")
        return "1.jpg", "missing scribble"
    if case == "white scribble":
        (root / "scribble").mkdir()
        for i in ORDER:
            Image.fromarray(np.full((RES, RES), 255 if i == 4 else 0, np.uint8)).save(root / "scribble" / f"{i}.png")
        return "4.jpg", "mostly white"
    (root / "image" / "2.jpg").write_bytes(b"not a jpeg")
    return "2.jpg", "cannot read image"


@pytest.mark.parametrize(
    "case",
    ["missing image", "wrong mask shape", "not one-hot", "unreadable image", "missing scribble", "white scribble"],
)
def test_bad_example_raises_naming_it(tmp_path, case):
    write_manual_dir(tmp_path / "manual", np.random.default_rng(1))
    name, problem = _break(tmp_path / "manual", case)
    with pytest.raises(BadExampleError) as info:
        build_dataset(tmp_path / "manual", tmp_path / "tfds", resolution=RES, test_size=TEST_SIZE)
    assert isinstance(info.value, ValueError)
    assert name in str(info.value) and problem in str(info.value)


def test_skip_bad_examples_builds_and_counts(tmp_path):
    write_manual_dir(tmp_path / "manual", np.random.default_rng(2))
    bad = {_break(tmp_path / "manual", case)[0] for case in ("missing image", "wrong mask shape", "not one-hot")}
    captions = tmp_path / "manual" / "text" / "captions_hq_beard_and_age_2022-08-19.json"
    captions.write_text(captions.read_text().replace("This Man has beard of length 3. He is in his Thirties.", " "))
    bad.add("3.jpg")

    builder = build_dataset(
        tmp_path / "manual", tmp_path / "tfds", resolution=RES, test_size=TEST_SIZE, skip_bad_examples=True
    )
    assert len(builder.bad_examples) == 4
    assert {problem.split(":")[0] for problem in builder.bad_examples} == bad
    assert any("empty caption" in problem for problem in builder.bad_examples)
    reloaded = CelebAMultiModal(data_dir=str(tmp_path / "tfds"), resolution=RES, test_size=TEST_SIZE)
    assert reloaded.bad_examples == builder.bad_examples  # kept in the prepared dataset's metadata
    sources = data_sources(tmp_path / "tfds", resolution=RES, test_size=TEST_SIZE)
    kept = [ex["name"].decode() for split in ("train", "test") for ex in sources[split]]
    assert sorted(kept) == sorted(f"{i}.jpg" for i in ORDER if f"{i}.jpg" not in bad)


def test_command_line(tmp_path, capsys):
    write_manual_dir(tmp_path / "manual", np.random.default_rng(3))
    args = [str(tmp_path / "manual"), str(tmp_path / "tfds"), "--resolution", str(RES), "--test-size", "2"]
    _break(tmp_path / "manual", "not one-hot")
    assert main(args) == 2
    assert "6.jpg" in capsys.readouterr().err
    assert main(args + ["--skip-bad-examples"]) == 0
    out = capsys.readouterr().out
    assert "train 6" in out and "test 1" in out and "1 bad examples skipped" in out
    assert main([str(tmp_path / "nope"), str(tmp_path / "tfds")]) == 2
    assert "manual dir" in capsys.readouterr().err


def test_check_lists_every_problem_and_writes_nothing(tmp_path, capsys):
    write_manual_dir(tmp_path / "manual", np.random.default_rng(4))
    manual = tmp_path / "manual"
    assert main([str(manual), "--check", "--resolution", str(RES)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    cases = ("missing image", "wrong mask shape", "unreadable image")
    expected = dict(_break(manual, case) for case in cases)
    Image.fromarray(np.zeros((RES, RES, 3), np.uint8)).save(manual / "image" / "extra.png")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([str(manual), "--check", "--resolution", str(RES)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"4 problem(s) in {manual}"
    for name, problem in expected.items():
        assert any(line.startswith(f"{name}: ") and problem in line for line in lines), (name, lines)
    assert "extra.png: no caption names it (a build leaves it out)" in lines
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    with pytest.raises(SystemExit):  # a build needs its data_dir
        main([str(manual)])
    assert "give the data_dir" in capsys.readouterr().err

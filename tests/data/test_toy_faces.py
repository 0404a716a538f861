"""Procedural toy faces: determinism, complementary modalities, captions, and the dataset files."""

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from cdiff_jax.data import toy_faces as T
from cdiff_jax.data.celeba_multimodal import CAPTIONS_JSON, build_dataset, data_sources
from cdiff_jax.data.masks import CLASS_NAMES, NUM_CLASSES, load_label_map, resize_label_map
from cdiff_jax.data.scribbles import scribble_from_labels

SEEDS = range(300)


@pytest.fixture(scope="module")
def examples():
    return [T.make_example(seed) for seed in SEEDS]


def _assert_same(a, b):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert a["caption"] == b["caption"] and a["attributes"] == b["attributes"]


def test_same_seed_same_example_and_different_seeds_differ():
    _assert_same(T.make_example(7), T.make_example(7))
    a, b = T.make_example(7), T.make_example(8)
    assert not np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["labels"], b["labels"])


def test_scribble_is_the_line_drawing_of_the_label_map(examples):
    for ex in examples:
        assert ex["scribble"].shape == (T.IMAGE_SIZE, T.IMAGE_SIZE) and ex["scribble"].dtype == np.uint8
        np.testing.assert_array_equal(ex["scribble"], scribble_from_labels(ex["labels"]))
        assert 0.02 < (ex["scribble"] > 0).mean() < 0.5  # a drawing, neither empty nor solid
    np.testing.assert_array_equal(T.make_example(5)["scribble"], T.make_example(5)["scribble"])
    np.testing.assert_array_equal(T.make_example(5, beard=3, age=5)["scribble"], T.make_example(5)["scribble"])


def test_class_ids_follow_class_names():
    named = {"skin": T.SKIN, "eye_g": T.EYE_G, "mouth": T.MOUTH, "hair": T.HAIR, "hat": T.HAT, "cloth": T.CLOTH}
    assert {name: CLASS_NAMES.index(name) for name in named} == named


def test_shapes_and_valid_class_ids(examples):
    for ex in examples[:50]:
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (T.IMAGE_SIZE, T.IMAGE_SIZE, 3)
        assert ex["labels"].dtype == np.uint8 and ex["labels"].shape == (T.IMAGE_SIZE, T.IMAGE_SIZE)
        assert ex["labels"].max() < NUM_CLASSES
        assert ex["image"].std() > 20  # a face on a background, not a flat image
    json.dumps([ex["attributes"] for ex in examples])  # attributes are plain JSON values


def _rows_above_eyes(labels):
    return np.flatnonzero(np.isin(labels, (T.L_EYE, T.R_EYE)).any(axis=1)).min()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("age", [0, 5])
def test_beard_is_in_the_image_only(seed, age):
    faces = [T.make_example(seed, beard=b, age=age) for b in range(len(T.BEARD_LENGTHS))]
    labels = faces[0]["labels"]
    eyes_top = _rows_above_eyes(labels)
    changed = []
    for face in faces[1:]:
        np.testing.assert_array_equal(face["labels"], labels)  # beard is not a parsing class
        np.testing.assert_array_equal(face["image"][:eyes_top], faces[0]["image"][:eyes_top])
        diff = np.abs(face["image"].astype(int) - faces[0]["image"]).sum(axis=-1) > 0
        changed.append(diff.sum())
        lower_face = (labels == T.SKIN) & diff
        assert lower_face.sum() > 40, "the beard covers the lower face"
        change = np.abs(face["image"][lower_face].astype(int) - faces[0]["image"][lower_face]).mean()
        assert change > 25, "the beard is clearly visible"
        if age == 0:
            darker = face["image"][lower_face].mean() < faces[0]["image"][lower_face].mean() - 15
            assert darker, "a young man's beard is darker than the skin it grows on"
    assert changed[0] < changed[1] < changed[2], "longer beards cover more"
    long_diff = np.abs(faces[3]["image"].astype(int) - faces[0]["image"]).sum(axis=-1) > 0
    assert (long_diff & (labels == T.NECK)).sum() > 10, "a long beard hangs over the neck"


def _hairy_seeds(n):
    return [s for s in SEEDS if T.make_example(s)["attributes"]["hair_style"] != "none"][:n]


@pytest.mark.parametrize("seed", _hairy_seeds(6))
def test_age_greys_the_hair_but_not_the_labels(seed):
    young, old = T.make_example(seed, age=0), T.make_example(seed, age=5)
    np.testing.assert_array_equal(young["labels"], old["labels"])
    hair = young["labels"] == T.HAIR
    young_hair, old_hair = young["image"][hair].astype(float), old["image"][hair].astype(float)
    assert old_hair.mean() > young_hair.mean() + 40
    saturation = lambda px: (px.max(axis=1) - px.min(axis=1)).mean()  # noqa: E731
    assert saturation(old_hair) < saturation(young_hair) + 1
    assert young["caption"] != old["caption"]


@pytest.mark.parametrize("seed", range(6))
def test_the_beard_is_solid_so_the_autoencoder_can_keep_it(seed):
    """Every skin pixel under a medium beard changes (no gaps between hairs), and each length covers more skin."""
    bare = T.make_example(seed, beard=0, age=0)
    skin = bare["labels"] == T.SKIN
    covered = []
    for beard in (1, 2):
        face = T.make_example(seed, beard=beard, age=0)
        changed = (np.abs(face["image"].astype(int) - bare["image"]).sum(-1) > 0) & skin
        rows = np.flatnonzero(changed.any(axis=1))
        lower = skin & (np.arange(T.IMAGE_SIZE)[:, None] > rows.min() + (rows.max() - rows.min()) // 2)
        assert changed[lower].mean() > 0.97, "gaps in the lower half of the beard"
        covered.append(changed.sum())
    assert covered[1] > 1.2 * covered[0], covered


@pytest.mark.parametrize("seed", _hairy_seeds(4))
def test_every_decade_greys_the_hair_by_a_visible_step(seed):
    faces = [T.make_example(seed, beard=0, age=a) for a in range(len(T.AGE_DECADES))]
    hair = faces[0]["labels"] == T.HAIR
    brightness = np.array([face["image"][hair].astype(float).mean() for face in faces])
    assert np.diff(brightness).min() > 0.1 * (brightness[-1] - brightness[0]), brightness


def test_wrinkles_increase_with_age():
    """Beyond hair colour, older faces get darker lines on the skin (visible also on bald heads)."""
    for seed in range(6):
        # Beardless, since the beard greys with age too and would change the skin pixels as well.
        faces = [T.make_example(seed, beard=0, age=a) for a in range(len(T.AGE_DECADES))]
        skin = faces[0]["labels"] == T.SKIN
        lined = [(np.abs(face["image"].astype(int) - faces[0]["image"]).sum(-1) > 0)[skin].sum() for face in faces]
        assert lined[0] == 0 and lined[1] == 0 and lined[5] > lined[3] > lined[2] > 0


def test_caption_round_trip(examples):
    for ex in examples[:200]:
        attributes = ex["attributes"]
        assert T.parse_caption(ex["caption"]) == (attributes["beard"], attributes["age"])
        assert ex["caption"].startswith(("This man", "The man"))
    assert len({ex["caption"].split(" has ")[0] for ex in examples[:200]}) > 2, "several phrasings"


def test_parse_caption_reference_style_and_errors():
    assert T.parse_caption("This man has beard of medium length. He is in his thirties.") == (2, 1)
    assert T.parse_caption("This man has no beard. He is in his sixties.") == (0, 4)
    assert T.parse_caption("This man has a long beard. He is in his forties.") == (3, 2)
    for bad in (
        "This man has a beard. He is in his forties.",
        "This man has no beard.",
        "This man has a short or long beard. He is in his fifties.",
    ):
        with pytest.raises(ValueError, match="expected one of each"):
            T.parse_caption(bad)


def test_attribute_distribution_and_mask_agreement(examples):
    attributes = [ex["attributes"] for ex in examples]
    assert {a["beard"] for a in attributes} == set(range(len(T.BEARD_LENGTHS)))
    assert {a["age"] for a in attributes} == set(range(len(T.AGE_DECADES)))
    assert {a["mouth_open"] for a in attributes} == {True, False}
    assert {a["hair_style"] for a in attributes} == set(T.HAIR_STYLES)
    for key in ("hat", "glasses", "earrings", "necklace"):
        share = np.mean([a[key] for a in attributes])
        assert 0.05 < share < 0.6, (key, share)
    classes = {"mouth_open": T.MOUTH, "hat": T.HAT, "glasses": T.EYE_G, "earrings": T.EAR_R, "necklace": T.NECK_L}
    for ex in examples:
        for key, cls in classes.items():
            assert ex["attributes"][key] == bool((ex["labels"] == cls).any()), (ex["attributes"], key)


def test_overrides_are_validated():
    for kwargs in ({"beard": 4}, {"age": -1}, {"age": 2.0}):
        with pytest.raises(ValueError, match="must be an int"):
            T.make_example(0, **kwargs)


def test_write_dataset_builds_and_reads_back(tmp_path):
    root = T.write_dataset(tmp_path / "toy", 12, seed=3)
    names = [f"{i}.png" for i in range(12)]
    captions = json.loads((root / "text" / CAPTIONS_JSON).read_text())
    assert list(captions) == names
    attributes = json.loads((root / T.ATTRIBUTES_JSON).read_text())
    assert list(attributes) == names
    assert not [p for p in root.rglob(".*")], "no temp files left behind"

    expected = {name: T.make_example(T.example_seed(3, i)) for i, name in enumerate(names)}
    for name, ex in expected.items():
        assert captions[name] == {"Beard_and_Age": ex["caption"]} and attributes[name] == ex["attributes"]
        np.testing.assert_array_equal(load_label_map(root / "mask" / name), ex["labels"])
        np.testing.assert_array_equal(np.asarray(Image.open(root / "scribble" / name)), ex["scribble"])

    build_dataset(root, tmp_path / "tfds", resolution=64, test_size=2)
    sources = data_sources(tmp_path / "tfds", resolution=64, test_size=2)
    assert [ex["name"].decode() for ex in sources["test"]] == names[-2:]
    for split in ("train", "test"):
        for record in sources[split]:
            ex = expected[record["name"].decode()]
            np.testing.assert_array_equal(record["image"], ex["image"])
            np.testing.assert_array_equal(record["mask"], resize_label_map(ex["labels"], 32))
            assert record["caption"] == ex["caption"].encode()
            np.testing.assert_array_equal(record["scribble"], ex["scribble"])


def test_write_dataset_rejects_bad_count(tmp_path):
    with pytest.raises(ValueError, match="positive integer"):
        T.write_dataset(tmp_path, 0)


def test_cli_writes_dataset_and_preview(tmp_path, capsys):
    preview = tmp_path / "grid.png"
    assert T.main([str(tmp_path / "out"), "--count", "5", "--seed", "1", "--preview", str(preview)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "image").iterdir()) == [f"{i}.png" for i in range(5)]
    with Image.open(preview) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.width > 4 * 2 * T.IMAGE_SIZE and img.height > 2 * T.IMAGE_SIZE


def test_progress_bar_counts_the_faces(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    T.write_dataset(tmp_path, 8)
    assert "toy faces: 100%" in sys.stderr.getvalue() and "8/8" in sys.stderr.getvalue()

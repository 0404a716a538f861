"""The judges: shapes, training, held-out metrics, the judges directory round trip, and the CLI's errors."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.data import toy_faces
from cdiff_jax.data.celeba_multimodal import CAPTIONS_JSON
from cdiff_jax.data.masks import NUM_CLASSES
from cdiff_jax.evaluation import judges as J
from cdiff_jax.optimization import NonFiniteStep

pytestmark = pytest.mark.slow

STEPS, BATCH, TEST_SIZE = 20, 8, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return toy_faces.write_dataset(tmp_path_factory.mktemp("toy") / "raw", 48, seed=0)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A judges directory from the CLI, and what it printed."""
    out = tmp_path_factory.mktemp("judges") / "out"
    argv = [str(dataset), str(out), "--steps", str(STEPS), "--batch", str(BATCH), "--test-size", str(TEST_SIZE)]
    assert J.main(argv) == 0
    return out


def _images(n, seed=0):
    return J.from_uint8(np.stack([toy_faces.make_example(seed + i)["image"] for i in range(n)]))


def test_output_shapes_and_ranges():
    judges = J.Judges(J.JudgesConfig(), rngs=nnx.Rngs(0))
    images = _images(3)
    assert judges.parser(images).shape == (3, 64, 64, NUM_CLASSES)
    labels = J.parse(judges, images)
    assert labels.shape == (3, 64, 64) and int(labels.min()) >= 0 and int(labels.max()) < NUM_CLASSES
    beard, age = attribute = J.attribute_predictions(judges, images)
    assert beard.shape == age.shape == (3,)
    assert all(0 <= int(v) < len(toy_faces.BEARD_LENGTHS) for v in beard)
    assert all(0 <= int(v) < len(toy_faces.AGE_DECADES) for v in age)
    assert attribute[0].dtype == np.int32
    assert J.features(judges, images).shape == (3, J.ClassifierConfig().widths[-1])
    beard_logits, age_logits = judges.classifier(images)
    assert beard_logits.shape == (3, 4) and age_logits.shape == (3, 6)


def test_scoring_rejects_bad_images():
    judges = J.Judges(J.JudgesConfig(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[B, 64, 64, 3\]"):
        J.parse(judges, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="from_uint8"):
        J.features(judges, np.zeros((2, 64, 64, 3), np.uint8))


def test_from_uint8_maps_to_minus_one_one():
    np.testing.assert_allclose(J.from_uint8(np.array([0, 255], np.uint8)), [-1.0, 1.0])


def test_loading_keeps_index_order_and_splits_off_the_last_examples(dataset):
    data = J.load_toy_faces(dataset)
    assert len(data) == 48 and data.images.dtype == np.uint8 and data.labels.shape == (48, 64, 64)
    example = toy_faces.make_example(toy_faces.example_seed(0, 45))
    np.testing.assert_array_equal(data.images[45], example["image"])
    np.testing.assert_array_equal(data.labels[45], example["labels"])
    assert (data.beard[45], data.age[45]) == (example["attributes"]["beard"], example["attributes"]["age"])
    train, held_out = J.split_held_out(data, 8)
    assert len(train) == 40 and len(held_out) == 8
    np.testing.assert_array_equal(held_out.images[0], data.images[40])
    for bad in (0, 48, 2.0):
        with pytest.raises(ValueError, match="test size"):
            J.split_held_out(data, bad)


def test_mirror_flips_the_chosen_examples_and_keeps_left_labels_on_the_left(dataset):
    data = J.load_toy_faces(dataset).take(slice(0, 6))
    which = np.array([True, False, True, True, False, True])
    mirrored = J.mirror(data, which)
    np.testing.assert_array_equal(mirrored.images[1], data.images[1])
    np.testing.assert_array_equal(mirrored.images[0], data.images[0][:, ::-1])
    for name in ("images", "labels", "beard", "age"):
        np.testing.assert_array_equal(getattr(J.mirror(mirrored, which), name), getattr(data, name))
    for labels in mirrored.labels[which]:  # l_* is the image-left part, before and after mirroring
        for left, right in ((4, 5), (6, 7), (8, 9)):
            assert np.nonzero(labels == left)[1].mean() < np.nonzero(labels == right)[1].mean()


def test_class_weights_favour_rare_classes_and_average_one_per_pixel():
    labels = np.zeros((2, 10, 10), np.uint8)
    labels[0, :2] = 1  # 20 pixels of class 1, 4 of class 2, the rest background
    labels[1, 0, :4] = 2
    weights = J.class_weights(labels)
    assert weights.dtype == np.float32 and weights.shape == (NUM_CLASSES,)
    assert weights[2] > weights[1] > weights[0] > 0 and not weights[3:].any()
    np.testing.assert_allclose(weights[labels].mean(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights[2] / weights[1], (20 / 4) ** J.CLASS_WEIGHT_POWER, rtol=1e-6)


def test_training_lowers_every_loss(dataset):
    """On a few examples seen again and again, each judge must fit them: every loss falls."""
    few = J.load_toy_faces(dataset).take(slice(0, BATCH))
    judges = J.Judges(J.JudgesConfig(), rngs=nnx.Rngs(1))
    before = np.asarray(J.parse(judges, J.from_uint8(few.images)))
    # Two steps per call: the same steps as the CPU policy's ten, and a fifth of the unrolled program to compile
    # (the `trained` fixture runs the default).
    _, losses = J.fit(judges, few, steps=40, batch=BATCH, seed=1, learning_rate=3e-3, steps_per_call=2, progress=False)
    assert set(losses) == {"parser", "beard", "age"} and all(v.shape == (40,) for v in losses.values())
    assert all(np.isfinite(v).all() for v in losses.values())
    for name, values in losses.items():
        assert values[-5:].mean() < 0.7 * values[:5].mean(), (name, values)
    after = np.asarray(J.parse(judges, J.from_uint8(few.images)))
    assert (after == few.labels).mean() > (before == few.labels).mean() + 0.1


def test_a_non_finite_loss_stops_training_with_the_last_good_judges(dataset):
    few = J.load_toy_faces(dataset).take(slice(0, BATCH))
    bad = J.ToyFaces(
        np.where(np.arange(BATCH)[:, None, None, None] == 0, np.nan, few.images.astype(np.float32)),
        few.labels,
        few.beard,
        few.age,
    )  # every batch holds the NaN image
    judges = J.Judges(J.JudgesConfig(), rngs=nnx.Rngs(1))
    before = jax.tree.map(np.asarray, nnx.state(judges))
    with pytest.raises(NonFiniteStep, match="non-finite judge loss or gradient at step 1;") as caught:
        J.fit(judges, bad, steps=2, batch=BATCH, progress=False)
    assert caught.value.step == 1
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(judges)))


def test_directory_holds_configs_metrics_settings_and_small_weights(trained, dataset):
    info = json.loads((trained / J.JUDGES_JSON).read_text())
    assert J.JudgesConfig.from_dict(info["config"]) == J.JudgesConfig()
    m = info["metrics"]
    assert m["examples"] == TEST_SIZE
    for key in ("parser_pixel_accuracy", "parser_mean_iou", "beard_accuracy", "age_accuracy"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["parser_iou"] and all(0.0 <= v <= 1.0 for v in m["parser_iou"].values())
    assert m["frechet_train_vs_held_out"] >= 0.0
    t = info["training"]
    assert (t["steps"], t["batch"], t["test_size"], t["seed"], t["train_examples"]) == (STEPS, BATCH, TEST_SIZE, 0, 40)
    assert t["data_dir"] == str(dataset.absolute())
    size = sum(f.stat().st_size for f in trained.rglob("*") if f.is_file())
    assert size < 2_000_000
    assert not [p.name for p in trained.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_loaded_judges_reproduce_the_stored_held_out_metrics(trained, dataset):
    judges = J.load_judges(trained)
    _, held_out = J.split_held_out(J.load_toy_faces(dataset), TEST_SIZE)
    stored = json.loads((trained / J.JUDGES_JSON).read_text())["metrics"]
    recomputed = J.evaluate(judges, held_out)
    assert recomputed == {k: v for k, v in stored.items() if k in recomputed}


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    judges = J.Judges(
        J.JudgesConfig(
            parser=J.ParserConfig(widths=(4, 8)), classifier=J.ClassifierConfig(stem_width=4, widths=(8, 16))
        ),
        rngs=nnx.Rngs(3),
    )
    J.save_judges(tmp_path / "j", judges, {"metrics": {}})
    loaded = J.load_judges(tmp_path / "j")
    assert loaded.cfg == judges.cfg
    images = _images(4, seed=10)
    for fn in (J.parse, J.features):
        np.testing.assert_array_equal(fn(loaded, images), fn(judges, images))
    for a, b in zip(J.attribute_predictions(loaded, images), J.attribute_predictions(judges, images)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.parser(images), judges.parser(images))
    assert jax.tree.all(
        jax.tree.map(np.array_equal, nnx.to_pure_dict(nnx.state(loaded)), nnx.to_pure_dict(nnx.state(judges)))
    )
    with pytest.raises(FileExistsError, match="exists"):
        J.save_judges(tmp_path / "j", judges, {})
    J.save_judges(tmp_path / "j", judges, {"note": "second"}, overwrite=True)
    assert J.read_judges_info(tmp_path / "j")["note"] == "second"


def test_load_rejects_a_directory_that_is_not_judges(tmp_path):
    with pytest.raises(ValueError, match="not a judges directory"):
        J.load_judges(tmp_path)


def _run_cli(capsys, *argv):
    code = J.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_refuses_an_existing_output_directory(trained, dataset, capsys):
    before = (trained / J.JUDGES_JSON).read_text()
    code, err = _run_cli(capsys, dataset, trained, "--steps", 1)
    assert code == 1 and len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert (trained / J.JUDGES_JSON).read_text() == before


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "not found"),
        ("no_captions", f"text/{CAPTIONS_JSON} is missing"),
        ("no_mask", "mask/3.png"),
    ],
)
def test_cli_names_a_missing_or_incomplete_dataset(dataset, tmp_path, capsys, breakage, message):
    data = tmp_path / "data"
    if breakage != "missing":
        shutil.copytree(dataset, data)
        (data / "text" / CAPTIONS_JSON).unlink() if breakage == "no_captions" else (data / "mask" / "3.png").unlink()
    code, err = _run_cli(capsys, data, tmp_path / "out", "--steps", 1)
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_rejects_a_test_size_that_leaves_no_training_data(dataset, tmp_path, capsys):
    code, err = _run_cli(capsys, dataset, tmp_path / "out", "--test-size", 48)
    assert code == 1 and len(err) == 1 and "test size" in err[0]


def test_shipped_toy_judges_parse_and_classify_fresh_toy_faces():
    info = J.read_judges_info(J.TOY_JUDGES_DIR)
    assert info["metrics"]["parser_pixel_accuracy"] > 0.9 and info["metrics"]["examples"] == 1000
    judges = J.load_judges(J.TOY_JUDGES_DIR)
    examples = [toy_faces.make_example(toy_faces.example_seed(1, i)) for i in range(16)]  # not in its data
    images = J.from_uint8(np.stack([e["image"] for e in examples]))
    labels = np.stack([e["labels"] for e in examples])
    assert (np.asarray(J.parse(judges, images)) == labels).mean() > 0.9
    beard, age = J.attribute_predictions(judges, images)
    assert (np.asarray(beard) == [e["attributes"]["beard"] for e in examples]).mean() >= 0.8
    assert (np.asarray(age) == [e["attributes"]["age"] for e in examples]).mean() >= 0.6

"""Toy editing: the controlled targets and the scores that judge an edit."""

import itertools

import numpy as np
import pytest
from PIL import Image

from cdiff_jax.data import toy_faces as T
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation import toy_edit as E
from cdiff_jax.evaluation.miniature import DEMO_JUDGES, held_out_examples

pytestmark = pytest.mark.slow


def test_caption_targets_are_far_from_the_source():
    for beard, age in itertools.product(range(len(T.BEARD_LENGTHS)), range(len(T.AGE_DECADES))):
        new_beard, new_age = E.edited_attributes(beard, age)
        assert (beard == 0) == (new_beard == 3) and (beard > 0) == (new_beard == 0)
        assert abs(new_age - age) == 3 and 0 <= new_age < len(T.AGE_DECADES)


def test_targets_change_only_what_the_edit_names():
    source, donor = held_out_examples(2)
    text, mask, both = (E.targets(source, donor, kind) for kind in ("text", "mask", "both"))
    edited = E.edited_attributes(source["attributes"]["beard"], source["attributes"]["age"])
    assert T.parse_caption(text["caption"]) == edited == T.parse_caption(both["caption"])
    np.testing.assert_array_equal(text["labels"], source["labels"])
    assert mask["caption"] == source["caption"]
    np.testing.assert_array_equal(mask["labels"], donor["labels"])
    np.testing.assert_array_equal(both["labels"], donor["labels"])


@pytest.fixture(scope="module")
def judges():
    return J.load_judges(DEMO_JUDGES)


def test_the_scores_tell_a_perfect_edit_from_no_edit(judges):
    """The true target faces (re-rendered by the toy world) score as targets; the unedited sources do not."""
    faces = held_out_examples(16)
    rows = {"source": [], "target": []}
    for source, donor in zip(faces[:8], faces[8:]):
        target = E.targets(source, donor, "text")
        truth = T.make_example(source["seed"], *(target["attributes"][k] for k in ("beard", "age")))
        scores = E.judge(judges, np.stack([source["image"], truth["image"]]), source, target)
        for k, who in enumerate(rows):
            rows[who].append({field: values[k] for field, values in scores.items()})
        assert "moved_pixels_as_target" not in scores  # a caption edit keeps the layout
    mean = {who: {f: np.mean([r[f] for r in rs]) for f in rs[0]} for who, rs in rows.items()}
    assert mean["target"]["beard_to_target"] > 0.8 and mean["source"]["beard_to_target"] < 0.2
    assert mean["target"]["age_to_target"] > 0.6 and mean["source"]["age_to_target"] < 0.2
    assert mean["target"]["beard_target_probability"] > 0.8 > 0.2 > mean["source"]["beard_target_probability"]
    assert mean["target"]["age_target_probability"] > 0.6 > 0.2 > mean["source"]["age_target_probability"]
    assert min(mean["source"]["kept_pixels"], mean["target"]["kept_pixels"]) > 0.9

    source, donor = faces[0], faces[1]
    target = E.targets(source, donor, "mask")
    scores = E.judge(judges, np.stack([source["image"], donor["image"]]), source, target)
    assert scores["moved_pixels_as_source"][0] > 0.8 > 0.2 > scores["moved_pixels_as_target"][0]
    assert scores["moved_pixels_as_target"][1] > 0.8 > 0.2 > scores["moved_pixels_as_source"][1]


# Editing the demo models: held-out faces 0-1, alpha 0 (the optimised embedding) against 1 (the target),
# Imagic as toy_edit runs it, 25 steps. Margins come from faces 0-5 edited the same way
# (`python -m cdiff_jax.evaluation.toy_edit --count 6 --alphas 0,1 --steps 25 --kinds text,mask`); the
# comments give each change from alpha 0 to 1 as mean (standard deviation, extreme) over those six, and
# this test's own two faces (`--count 2`, which pairs faces 0-1 with the layouts of faces 2-3).
FACES, ALPHAS, STEPS = 2, (0.0, 1.0), 25


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_edit")
    return out, E.run(FACES, out, ALPHAS, E.DEMO_IMAGIC, STEPS, kinds=("text", "mask"))


def change(face: dict, field: str) -> float:
    before, after = face[field]
    return after - before


def test_a_caption_edit_moves_the_attributes_toward_the_target_and_keeps_the_layout(edit_run):
    faces = edit_run[1]["text"]["per_face"]
    gains = [(change(face, "beard_target_probability") + change(face, "age_target_probability")) / 2 for face in faces]
    # Mean target probability of beard and age: +0.41 (0.34, smallest +0.001: one face did not move);
    # faces 0 and 1: +0.29 and +0.58. The mean of two faces has a standard error of 0.24 (from the six's
    # spread); 0.1 is 1.4 of them below +0.44.
    assert np.mean(gains) > 0.1, gains
    for face in faces:
        # The parser's agreement with the source's map: -0.003 (0.018, largest |change| 0.028); here -0.009, -0.028.
        assert abs(change(face, "kept_pixels")) < 0.06, face


def test_a_mask_edit_moves_the_layout_to_the_target_and_keeps_the_rest(edit_run):
    faces = edit_run[1]["mask"]["per_face"]
    # Changed pixels parsed as the target's class: +0.30 (0.20, smallest +0.14), and as the source's
    # -0.30. Here the layouts come from faces 2-3 instead of 6-7 (`run` pairs face i with i + count):
    # +0.19 and +0.12 (as the source's: -0.22, -0.13). So the mean of two allows 0.08 and each face 0.05.
    assert np.mean([change(face, "moved_pixels_as_target") for face in faces]) > 0.08
    for face in faces:
        assert change(face, "moved_pixels_as_target") > 0.05 and change(face, "moved_pixels_as_source") < -0.05, face
        # Unchanged pixels: -0.001 (0.005, largest |change| 0.007); here 0.000, +0.001.
        assert abs(change(face, "kept_pixels")) < 0.03, face


def test_the_grid_shows_each_source_beside_its_sweeps(edit_run):
    out, _ = edit_run
    grid = np.asarray(Image.open(out / "grid.png"))
    cell, pad, label = 64 + 2, 2, 14
    assert grid.shape == (label + FACES * cell + pad, (1 + 2 * len(ALPHAS)) * cell + pad, 3)
    first_source = np.asarray(Image.open(out / "inputs/000/image.png"))
    np.testing.assert_array_equal(grid[label + pad : label + pad + 64, pad : pad + 64], first_source)

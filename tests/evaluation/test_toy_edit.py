"""Toy editing: the controlled targets and the scores that judge an edit."""

import itertools

import numpy as np
import pytest

from cdiff_jax.data import toy_faces as T
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation import toy_edit as E
from cdiff_jax.evaluation.miniature import DEMO_JUDGES, held_out_examples


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
    assert min(mean["source"]["kept_pixels"], mean["target"]["kept_pixels"]) > 0.9

    source, donor = faces[0], faces[1]
    target = E.targets(source, donor, "mask")
    scores = E.judge(judges, np.stack([source["image"], donor["image"]]), source, target)
    assert scores["moved_pixels_as_source"][0] > 0.8 > 0.2 > scores["moved_pixels_as_target"][0]
    assert scores["moved_pixels_as_target"][1] > 0.8 > 0.2 > scores["moved_pixels_as_source"][1]

"""The miniature evaluation with the shipped demo models: the paper's claim, at a small N."""

import numpy as np
import pytest

from cdiff_jax.evaluation import miniature as M
from cdiff_jax.evaluation import paper

pytestmark = pytest.mark.slow

COUNT, STEPS = 48, 25


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("miniature")
    return M.run(M.DEMO_CHECKPOINT, M.DEMO_JUDGES, COUNT, out, steps=STEPS, batch=COUNT), out


@pytest.fixture(scope="module")
def results(evaluated):
    """Each row's means (the per-image values are checked in the first test)."""
    return {name: {key: value["mean"] for key, value in row.items()} for name, row in evaluated[0].items()}


def test_every_method_is_scored(evaluated, results):
    rows, out = evaluated
    assert set(rows) == {"real images", "autoencoder reconstructions", *(m.name for m in M.METHODS)}
    for name, row in rows.items():
        for key in ("mask_accuracy", "beard_accuracy", "age_accuracy", "attribute_accuracy"):
            assert 0 <= row[key]["mean"] <= 1, (name, key)
            assert len(row[key]["per_image"]) == COUNT and row[key]["stderr"] >= 0
        assert row["attribute_accuracy"]["mean"] == pytest.approx(
            (row["beard_accuracy"]["mean"] + row["age_accuracy"]["mean"]) / 2
        )
        assert 0 < row["miou"]["mean"] <= 1
    assert all(np.isfinite(results[m.name]["frechet"]) for m in M.METHODS)
    assert "frechet" not in results["real images"]
    assert "| collaborative (plain) |" in paper.table(rows)
    # The rows are the judges' scores of these very images (the program reads its samples back from disk).
    examples = M.held_out_examples(COUNT)
    images = paper.read_samples(out, next(m for m in M.METHODS if m.name == "mask expert"), COUNT)
    again = M.score(M.J.load_judges(M.DEMO_JUDGES), images, examples, None)
    assert again["per_example_mask_accuracy"] == pytest.approx(rows["mask expert"]["mask_accuracy"]["per_image"])


def test_no_method_beats_the_decoder_it_samples_through(results):
    # Every method shares its starting noise, so gaps are measured per example. At this test's N=48 and
    # 25 steps with the shipped models: real 0.981, reconstructions 0.945, methods 0.819-0.913; the
    # smallest gap (reconstructions - mask expert) is 0.032 with a standard error of 0.0034, so the 0.015
    # margin leaves 5 of them. Attribute accuracy: real 0.979, methods 0.18-0.49 (chance: 0.21).
    real, recon = results["real images"], results["autoencoder reconstructions"]
    assert real["mask_accuracy"] > recon["mask_accuracy"] + 0.02
    for method in M.METHODS:
        assert recon["mask_accuracy"] > results[method.name]["mask_accuracy"] + 0.015, method.name
        assert real["attribute_accuracy"] > results[method.name]["attribute_accuracy"] + 0.3, method.name


def test_each_expert_follows_its_own_condition(results):
    # N=48, paired per example: mask expert - text expert on layout 0.094 (standard error 0.006; N=200,
    # 50 steps: 0.091); text expert - mask expert on attributes 0.29 (0.061; N=200: 0.24). The margins
    # are 9 and 3 standard errors below.
    text, mask = results["text expert"], results["mask expert"]
    assert mask["mask_accuracy"] > text["mask_accuracy"] + 0.04
    assert text["attribute_accuracy"] > mask["attribute_accuracy"] + 0.1


def test_the_learned_maps_keep_the_mask_experts_layout_take_some_caption_and_beat_equal_weights(results):
    # The part of the paper's claim these models show (README). Paired per example, N=48: collaborative
    # minus equal weights on layout +0.016 (standard error 0.0025; N=200, 50 steps: +0.017, 0.0012), so
    # +0.005 is 4.4 standard errors below it; mask expert minus collaborative 0.0095 (0.0021; N=200:
    # 0.015, 0.0016), so the 0.02 allowance is 5 above it; collaborative minus mask expert on attributes
    # +0.125 (0.035; N=200: +0.10), so +0.02 is 3 below it. The maps do not keep the text expert's
    # attributes (0.30 against 0.49 here), which is not asserted either way.
    collab, mask = results["collaborative (plain)"], results["mask expert"]
    assert collab["mask_accuracy"] > results["equal weights"]["mask_accuracy"] + 0.005
    assert collab["mask_accuracy"] > mask["mask_accuracy"] - 0.02
    assert collab["attribute_accuracy"] > mask["attribute_accuracy"] + 0.02

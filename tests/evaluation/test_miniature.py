"""The miniature evaluation with the shipped demo models: the paper's claim, at a small N."""

import numpy as np
import pytest

from cdiff_jax.evaluation import miniature as M

COUNT, STEPS = 48, 25


@pytest.fixture(scope="module")
def results():
    return M.run(M.DEMO_CHECKPOINT, M.DEMO_JUDGES, COUNT, steps=STEPS, batch=COUNT)[0]


def test_every_method_is_scored(results):
    assert set(results) == {"real images", "autoencoder reconstructions", *(m.name for m in M.METHODS)}
    for name, row in results.items():
        for key in ("mask_accuracy", "beard_accuracy", "age_accuracy", "attribute_accuracy"):
            assert 0 <= row[key] <= 1, (name, key)
        assert len(row["per_example_mask_accuracy"]) == COUNT
    assert all(np.isfinite(results[m.name]["frechet"]) for m in M.METHODS)
    assert "| collaborative (plain) |" in M.table(results)


def test_no_method_beats_the_decoder_it_samples_through(results):
    # Every method shares its starting noise, so gaps are measured per example. At this test's N=48 and
    # 25 steps with the shipped models: real 0.981, reconstructions 0.926, methods 0.802-0.884; the
    # smallest gap (reconstructions - mask expert) is 0.042 with a per-example standard deviation of
    # 0.042, a standard error of 0.006, so the 0.015 margin leaves 4.5 of them. Attribute accuracy:
    # real 0.979, methods 0.27-0.39 (chance: 0.21).
    real, recon = results["real images"], results["autoencoder reconstructions"]
    assert real["mask_accuracy"] > recon["mask_accuracy"] + 0.02
    for method in M.METHODS:
        assert recon["mask_accuracy"] > results[method.name]["mask_accuracy"] + 0.015, method.name
        assert real["attribute_accuracy"] > results[method.name]["attribute_accuracy"] + 0.3, method.name


def test_the_mask_expert_follows_the_label_map_better_than_the_text_expert(results):
    # N=48: 0.884 against 0.802, a gap of 0.082 with a standard error of 0.008 (N=200, 50 steps: 0.847
    # against 0.771). The text expert's lead on attributes (0.385 against 0.271 here, 0.325 against 0.240
    # at N=200) is within binomial noise at N=48 (standard error ~0.07), so it is not asserted.
    assert results["mask expert"]["mask_accuracy"] > results["text expert"]["mask_accuracy"] + 0.04


def test_the_learned_maps_keep_the_mask_experts_layout_and_beat_equal_weights(results):
    # The part of the paper's claim these models show (README). Paired per example, N=48: collaborative
    # minus equal weights +0.018 (standard error 0.0026; N=200, 50 steps: +0.013, 0.0011), so +0.005 is
    # 5 standard errors below it; mask expert minus collaborative 0.004 (0.003; N=200: 0.005, 0.002), so
    # the 0.015 allowance is 3.6 above it. Attributes are not asserted: the maps keep the text expert's
    # beard but not its age, and at N=48 either is within binomial noise.
    collab = results["collaborative (plain)"]["mask_accuracy"]
    assert collab > results["equal weights"]["mask_accuracy"] + 0.005
    assert collab > results["mask expert"]["mask_accuracy"] - 0.015

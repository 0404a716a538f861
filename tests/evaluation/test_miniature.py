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
    # 25 steps with the shipped models: real 0.981, reconstructions 0.924, methods 0.797-0.888; the
    # smallest gap (reconstructions - mask expert) is 0.036 with a per-example standard deviation of
    # 0.043, a standard error of 0.006, so the 0.015 margin leaves 3.5 of them. Attribute accuracy:
    # real 0.958, methods 0.18-0.25 (chance: 0.21).
    real, recon = results["real images"], results["autoencoder reconstructions"]
    assert real["mask_accuracy"] > recon["mask_accuracy"] + 0.02
    for method in M.METHODS:
        assert recon["mask_accuracy"] > results[method.name]["mask_accuracy"] + 0.015, method.name
        assert real["attribute_accuracy"] > results[method.name]["attribute_accuracy"] + 0.3, method.name


def test_the_mask_expert_follows_the_label_map_better_than_the_text_expert(results):
    # N=48: 0.888 against 0.797, a gap of 0.091 with a standard error of 0.008 (N=200, 50 steps: 0.859
    # against 0.776). The text expert's lead on attributes (0.24 against 0.18 here, 0.280 against 0.185
    # at N=200) is within binomial noise at N=48 (standard error ~0.06), so it is not asserted.
    assert results["mask expert"]["mask_accuracy"] > results["text expert"]["mask_accuracy"] + 0.04


def test_the_learned_maps_follow_the_label_map_better_than_equal_weights(results):
    # The part of the paper's claim these models show (README): collaboration keeps more of the mask
    # expert's layout than equal weights do. N=48: +0.0155 with a standard error of 0.0032 (N=200, 50
    # steps: +0.0117, 0.0025), so only the sign is asserted. It does not keep the text expert's
    # attributes, and the mask expert alone still leads on layout by 0.010, so neither is asserted.
    assert results["collaborative (plain)"]["mask_accuracy"] > results["equal weights"]["mask_accuracy"]

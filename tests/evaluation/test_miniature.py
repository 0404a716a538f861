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
    # Measured at N=200 (the README's command, the shipped models): mask accuracy real 0.979,
    # reconstructions 0.920, methods 0.776-0.817 with per-example standard deviations 0.073-0.081, so
    # at N=48 the standard error of a mean is ~0.012 and the 0.05 margin is 4 of them (the smallest gap
    # measured: 0.10). Attribute accuracy: real 0.945, methods 0.205-0.280 (chance: 0.21).
    real, recon = results["real images"], results["autoencoder reconstructions"]
    assert real["mask_accuracy"] > recon["mask_accuracy"] + 0.02
    for method in M.METHODS:
        assert recon["mask_accuracy"] > results[method.name]["mask_accuracy"] + 0.05, method.name
        assert real["attribute_accuracy"] > results[method.name]["attribute_accuracy"] + 0.3, method.name


def test_the_mask_expert_follows_the_label_map_better_than_the_text_expert(results):
    # N=200: 0.817 against 0.776. With per-example standard deviations ~0.075 the gap's standard error
    # at N=48 is ~0.015, so 0.041 is 2.7 of them: only its sign is asserted. The text expert's lead on
    # attributes (0.280 against 0.205 at N=200) is binomial noise at N=48 (standard error ~0.06), and
    # collaboration does not yet beat equal weights (README), so neither is asserted here.
    assert results["mask expert"]["mask_accuracy"] > results["text expert"]["mask_accuracy"]

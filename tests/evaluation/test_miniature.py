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

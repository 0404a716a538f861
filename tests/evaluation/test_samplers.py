"""The solver table: rows scored with their errors, the same images as the miniature evaluation's sampler,
and the one-standard-error rule."""

import numpy as np
import pytest

from cdiff_jax.checkpoint import load_system
from cdiff_jax.evaluation import miniature as M
from cdiff_jax.evaluation import samplers as S

pytestmark = pytest.mark.slow


def test_a_row_is_the_miniature_samplers_images_scored_with_errors(tmp_path):
    count, grid = 4, (("unipc", 2, 3, 0.0),)
    results, images = S.run(M.DEMO_CHECKPOINT, M.DEMO_JUDGES, count, batch=count, grid=grid)
    row = results["unipc (order 2), 3"]
    assert (row["solver"], row["order"], row["steps"], row["eta"]) == ("unipc", 2, 3, 0.0)
    for key in ("mask_accuracy", "attribute_accuracy"):
        assert 0 <= row[key] <= 1 and 0 <= row[f"{key}_se"] < 0.5, key
    assert np.isfinite(row["frechet"]) and row["frechet_se"] > 0 and row["seconds_per_image"] > 0
    again = M.generate(
        load_system(M.DEMO_CHECKPOINT),
        M.held_out_examples(count),
        S.METHOD,
        steps=3,
        batch=count,
        seed=0,
        solver="unipc",
        order=2,
        eta=0.0,
    )
    np.testing.assert_array_equal(images["UniPC2 3"], again)


def test_a_row_matches_unless_an_accuracy_is_more_than_one_standard_error_below():
    first = {"mask_accuracy": 0.80, "mask_accuracy_se": 0.01, "attribute_accuracy": 0.50, "attribute_accuracy_se": 0.02}
    rows = {
        "ddim 50": first,
        "close": {**first, "mask_accuracy": 0.795, "attribute_accuracy": 0.485},
        "better": {**first, "mask_accuracy": 0.85, "attribute_accuracy": 0.60},
        "mask below": {**first, "mask_accuracy": 0.785},
        "attributes below": {**first, "attribute_accuracy": 0.47},
    }
    assert S.matches_the_first_row(rows) == {
        "ddim 50": True,
        "close": True,
        "better": True,
        "mask below": False,
        "attributes below": False,
    }


def test_standard_errors():
    assert S.standard_error([0.0, 1.0, 0.0, 1.0]) == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3))
    stats = (np.zeros(3), np.eye(3))
    distance, error = S.frechet_with_error(features, stats, np.random.default_rng(1))
    assert 0 < error < distance + 0.1  # resampling 200 draws of N(0, I) moves the distance by little

"""The weighting diagnostic: its closed-form fit, its two partitions into regions, and a run on the shipped demo
models."""

import json

import numpy as np
import pytest

from cdiff_jax.data.masks import NUM_CLASSES
from cdiff_jax.data.toy_faces import make_example
from cdiff_jax.evaluation import weighting as W

pytestmark = pytest.mark.slow


def test_the_closed_form_weight_is_the_minimiser():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(4, 8, 8, 3))
    second = 0.6 * first + rng.normal(size=first.shape)  # correlated errors, as experts' are
    grid = np.linspace(-1, 2, 3001)
    losses = [np.sum((w * first + (1 - w) * second) ** 2) for w in grid]
    assert abs(W.best_weight(first, second) - grid[int(np.argmin(losses))]) < 1e-3


def test_every_class_falls_in_exactly_one_region():
    labels = np.arange(NUM_CLASSES).repeat(4).reshape(1, 1, -1).repeat(NUM_CLASSES * 4, axis=1)
    ids = W.region_ids(labels, latent_size=NUM_CLASSES)
    assert ids.min() >= 0 and len(np.unique(ids)) == len(W.REGIONS)
    assert sum(len(classes) for classes in W.REGIONS.values()) == NUM_CLASSES


def test_the_caption_area_is_where_beard_and_age_show():
    bare, bearded = (
        dict(make_example(seed, beard=beard, age=age), seed=seed) for seed, beard, age in ((3, 0, 0), (3, 3, 5))
    )
    ids = W.caption_region_ids([bare, bearded], latent_size=16)
    assert (ids[0] == 1).all()  # nothing differs from its own beardless, youngest rendering
    shown = ids[1] == 0
    assert 0 < shown.mean() < 0.5
    rows = np.nonzero(shown)[0]
    assert rows.mean() > 8  # a long beard lies mostly in the lower half of the face


def test_on_the_demo_models_the_fits_and_the_learned_maps_beat_the_experts(tmp_path):
    assert W.main(["--count", "16", "--timesteps", "300,900", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "weighting.json").read_text())
    assert [r["t"] for r in result["rows"]] == [300, 900]
    for row in result["rows"]:
        mse = row["mse"]
        experts = (mse["mask"], mse["text"])
        # A weight fitted on one half of the examples combines two experts' errors better than either
        # alone on the other half (measured at N=128: 3-8% below the better expert at every t), and so do
        # the maps the diffusers learned on this loss (within 0.7% of the best constant at every t).
        assert mse["best constant"] < min(experts), row
        assert mse["learned maps"] < min(experts), row
        assert 0 <= row["learned_weight_mean"] <= 1
        assert set(row["region_weights"]) == {"face part", "caption area"}
    assert "| 900 |" in (tmp_path / "weighting.md").read_text()
    assert "best per caption area" in result["rows"][0]["mse"]


def test_a_bad_timestep_is_refused_with_a_message(tmp_path, capsys):
    assert W.main(["--count", "4", "--timesteps", "1000", "--out", str(tmp_path / "out")]) == 2
    assert "--timesteps must lie in 0..999" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""Training-curve pictures from run directories."""

import json

import numpy as np
from PIL import Image

from cdiff_jax.train import curves


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_one_panel_per_run_with_the_reconstruction_term_for_autoencoders(tmp_path):
    _write(
        tmp_path / "vae/train/metrics.jsonl",
        [{"step": s, "loss": 1000.0 + s, "rec_loss": 1.0 / s} for s in range(1, 30)],
    )
    _write(tmp_path / "vae/val/metrics.jsonl", [{"step": 20, "loss": 0.06}])
    _write(tmp_path / "expert/train/metrics.jsonl", [{"step": s, "loss": 0.5 - s / 100} for s in range(1, 30)])
    steps, values = curves.read_metrics(tmp_path / "vae/train/metrics.jsonl", "rec_loss")
    assert steps[0] == 1 and values[-1] == 1 / 29
    np.testing.assert_allclose(curves.running_mean(np.array([1.0, 3.0, 5.0]), window=2), [1.0, 2.0, 4.0])
    out = tmp_path / "curves.png"
    assert curves.main([str(tmp_path / "vae"), str(tmp_path / "expert"), "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape[1] > 2 * curves.PANEL[0]  # two panels side by side
    orange = np.all(picture == curves.COLOURS["val"], axis=-1)
    assert orange[:, : curves.PANEL[0]].any() and not orange[:, curves.PANEL[0] + 4 :].any()


def test_a_directory_without_metrics_is_an_error(tmp_path, capsys):
    assert curves.main([str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert "no train/metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()

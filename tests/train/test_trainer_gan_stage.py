"""The trainer's gan stage: the toy StyleGAN2's training run, its resume, its export and its bad settings."""

import json

import numpy as np
import pytest

from cdiff_jax.checkpoint import load_generator
from cdiff_jax.train import stages, trainer
from cdiff_jax.train.config import TrainConfig

pytestmark = pytest.mark.slow

TINY_GAN = """
from cdiff_jax.config import StyleGAN2Config

def get_config(arg=""):
    return StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channel_base=32, channel_max=8)
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    config = tmp_path / "tiny_gan.py"
    config.write_text(TINY_GAN)
    rng = np.random.default_rng(0)
    images = [{"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)} for _ in range(64)]
    monkeypatch.setattr(stages, "gan_images", lambda cfg: images)
    return TrainConfig(
        stage="gan",
        system=str(config),
        data_dir="unused",
        resolution=8,
        global_batch=4,
        base_learning_rate=0.002 / 4,
        steps=3,
        r1_interval=2,
        log_every=1,
        checkpoint_every=2,
        val_every=0,
        sample_every=2,
        sample_count=4,
    )


def test_a_gan_run_logs_both_players_exports_g_ema_and_resumes(tiny, tmp_path):
    workdir = tmp_path / "run"
    assert trainer.train(tiny, workdir) == 0
    rows = [json.loads(line) for line in (workdir / "train/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["d_loss"]) for r in rows)
    # R1 runs on iterations 0 and 2 (r1_interval 2): logged at steps 1 and 3, nan at step 2.
    assert rows[0]["r1_penalty"] > 0 and np.isnan(rows[1]["r1_penalty"]) and rows[2]["r1_penalty"] > 0
    assert (workdir / "samples/0000002.png").is_file()
    generator = load_generator(workdir / "generator")
    assert generator.cfg.img_resolution == 8 and np.abs(np.asarray(generator.mapping.w_avg[...])).max() > 0
    assert trainer.train(tiny.replace(steps=5), workdir) == 0
    rows = [json.loads(line) for line in (workdir / "train/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # continued from the checkpoint at 3


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(system="tiny_system.py"), "trains a StyleGAN2 generator"),
        (dict(resolution=16), "resolution is 16"),
        (dict(steps_per_call=3), "must divide r1_interval"),
        (dict(global_batch=6), "minibatch-stddev group of 4"),
    ],
)
def test_bad_gan_settings_fail_in_one_line_before_training(tiny, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        trainer.train(tiny.replace(**change), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("data_dir, message", [("fresh-toy-faces:0", "other than 0"), ("fresh-toy-faces:x", "SEED")])
def test_fresh_toy_faces_need_a_seed_of_their_own(tmp_path, data_dir, message):
    cfg = TrainConfig(stage="gan", system="toy_gan.py", data_dir=data_dir, resolution=64)
    with pytest.raises(ValueError, match=message):
        stages.gan_images(cfg)


def test_fresh_toy_faces_are_new_faces_at_the_training_resolution():
    source = stages.gan_images(
        TrainConfig(stage="gan", system="toy_gan.py", data_dir="fresh-toy-faces:7", resolution=64)
    )
    a, b = source[0]["image"], source[1]["image"]
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and not np.array_equal(a, b)
    np.testing.assert_array_equal(source[0]["image"], a)  # a pure function of the index

"""The trainer's triplane stage: a tiny EG3D fitted to the toy 3D world, its export (generator, codes, w_avg),
its sample grid and its bad settings."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.checkpoint import load_eg3d_generator
from cdiff_jax.nn.eg3d import map_latents
from cdiff_jax.train import trainer
from cdiff_jax.train.config import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny():
    return TrainConfig(
        stage="triplane",
        system="tiny_eg3d.py:16",
        data_dir="toy-3d-world:7",
        resolution=64,
        global_batch=4,
        base_learning_rate=0.01 / 4,
        steps=6,
        triplane_identities=4,
        triplane_resolution=8,
        log_every=1,
        checkpoint_every=3,
        val_every=0,
        sample_every=6,
        sample_count=2,
    )


def test_a_triplane_run_fits_exports_the_generator_and_its_codes(tiny, tmp_path):
    workdir = tmp_path / "run"
    assert trainer.train(tiny, workdir) == 0
    rows = [json.loads(line) for line in (workdir / "train/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] < rows[0]["loss"]  # four identities, a few views each: the fit goes down at once
    assert (workdir / "samples/0000006.png").is_file()
    generator = load_eg3d_generator(workdir / "generator")
    assert generator.cfg.neural_rendering_resolution == 16  # exported at its own resolution, trained at 8
    codes = np.load(workdir / "generator/codes.npy")
    assert codes.shape == (4, 8)
    ws = map_latents(*nnx.split(generator), jnp.asarray(codes), jnp.zeros((4, 25)))
    np.testing.assert_allclose(generator.mapping.w_avg[...], np.asarray(ws[:, 0]).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(system="toy_gan.py"), "fits an EG3D generator without super-resolution"),
        (dict(data_dir="toy-3d-world:0"), "other than 0"),
        (dict(data_dir="data/tfds"), "toy-3d-world:SEED"),
        (dict(triplane_resolution=12), "must divide the toy world's 64"),
        (dict(triplane_depth_weight=-1.0), "triplane_depth_weight=-1.0: must be >= 0"),
        (
            dict(stage="gan", system="toy_gan.py", triplane_resolution=None, triplane_depth_weight=1.0),
            "only the triplane stage sees",
        ),
    ],
)
def test_bad_triplane_settings_fail_in_one_line_before_training(tiny, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        trainer.train(tiny.replace(**change), tmp_path / "run")
    assert not (tmp_path / "run").exists()

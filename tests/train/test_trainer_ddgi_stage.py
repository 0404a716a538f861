"""The trainer's DDGI stages on a tiny system and GAN: mapping then modulation, each training its head only."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from cdiff_jax.checkpoint import save_generator, save_system
from cdiff_jax.config import StyleGAN2Config, load_config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.heads import DDGIHeads, load_heads, save_heads
from cdiff_jax.ddgi.trajectories import TrajectorySettings, build_cache
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.system import init_system
from cdiff_jax.train import trainer
from cdiff_jax.train.config import TrainConfig

pytestmark = pytest.mark.slow

GAN = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channel_base=64, channel_max=8)
EG3D = load_config("tiny_eg3d.py:32")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddgi")
    system = init_system(load_config("tiny_system.py"), seed=0)
    save_system(root / "system", system)
    save_generator(root / "gan", Generator(GAN, rngs=nnx.Rngs(0)))
    save_generator(root / "gan_wide", Generator(dataclasses.replace(GAN, w_dim=16), rngs=nnx.Rngs(0)))
    save_generator(root / "eg3d", TriPlaneGenerator(EG3D, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    examples = [
        {
            "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "mask": rng.integers(0, 19, (32, 32), dtype=np.uint8),
            "caption": f"This man has beard of length {i}.",
        }
        for i in range(4)
    ]
    heads = DDGIHeads(
        heads_config(system.cfg, GAN, ("text", "mask"), mapping_channels=8, modulation_channels=8), rngs=nnx.Rngs(0)
    )
    save_heads(root / "heads_for_gan", heads)
    build_cache(system, examples, root / "cache", TrajectorySettings(steps=4, kept=(1, 4), batch=4))
    cfg = TrainConfig(
        stage="ddgi_mapping",
        system=str(root / "system"),
        gan=str(root / "gan"),
        data_dir=str(root / "cache"),
        resolution=32,
        global_batch=2,
        base_learning_rate=1e-3 / 2,
        steps=2,
        log_every=1,
        checkpoint_every=100,
        val_every=0,
        sample_every=2,
        sample_count=2,
        ddgi_mapping_channels=8,
        ddgi_modulation_channels=8,
    )
    return root, cfg


def params_of(heads, part):
    return {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(heads, nnx.Param)) if path[0] == part}


def test_mapping_then_modulation(world, tmp_path):
    root, cfg = world
    assert trainer.train(cfg, tmp_path / "mapping") == 0
    mapped = load_heads(tmp_path / "mapping/heads")
    assert (tmp_path / "mapping/samples/0000002.png").is_file()
    fresh = load_heads(tmp_path / "mapping/heads")  # the modulation head is still its zero-initialised start
    second = cfg.replace(stage="ddgi_modulation", init_from=(("heads", str(tmp_path / "mapping/heads")),))
    assert trainer.train(second, tmp_path / "modulation") == 0
    modulated = load_heads(tmp_path / "modulation/heads")
    for path, value in params_of(mapped, "mapping").items():
        np.testing.assert_array_equal(params_of(modulated, "mapping")[path], value)
    start = params_of(fresh, "modulation")
    changed = [np.abs(v - start[p]).max() for p, v in params_of(modulated, "modulation").items()]
    assert max(changed) > 0
    # The gating ablation is the modulation stage's choice: it holds although M was trained with gating on. No
    # samples: the two runs above wrote theirs, and ungated heads would compile a renderer of their own.
    ungated = second.replace(ddgi_attention_gating=False, sample_every=0)
    assert trainer.train(ungated, tmp_path / "ungated") == 0
    assert mapped.cfg.attention_gating and not load_heads(tmp_path / "ungated/heads").cfg.attention_gating
    differ = [
        np.abs(v - params_of(modulated, "modulation")[p]).max()
        for p, v in params_of(load_heads(tmp_path / "ungated/heads"), "modulation").items()
    ]
    assert max(differ) > 0  # another computation, so other updates


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(gan=None), "needs the frozen GAN"),
        (dict(stage="ddgi_modulation"), "starts from trained M"),
        (
            dict(stage="ddgi_modulation", gan="gan_wide", init_from=(("heads", "heads_for_gan"),)),
            "codes of 8 x 8 but the GAN takes 8 x 16",
        ),
        (
            dict(triplane_resolution=16),
            "only a tri-plane GAN without super-resolution renders at it, and .* holds a StyleGAN2 generator",
        ),
        (
            dict(gan="eg3d", triplane_resolution=16),
            r"must divide the toy world's 64, whose images the trajectory cache "
            r"must hold \(it holds 32x32\)",
        ),
    ],
)
def test_bad_ddgi_settings_fail_in_one_line_before_training(world, tmp_path, change, message):
    root, cfg = world
    if change.get("gan"):
        change["gan"] = str(root / change["gan"])
    if "init_from" in change:
        change["init_from"] = (("heads", str(root / "heads_for_gan")),)
    with pytest.raises(ValueError, match=message):
        trainer.train(cfg.replace(**change), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_triplane_resolution_belongs_to_the_tri_plane_stages(world):
    with pytest.raises(ValueError, match="only the triplane and DDGI stages render tri-planes"):
        world[1].replace(stage="collab", triplane_resolution=32)

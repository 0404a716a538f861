"""StyleGAN2 discriminator: parity with the official `D` of the fixture pickle, the minibatch-stddev
formula against a numpy transcription of it, and complete key maps at the fixture and released sizes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import StyleGAN2DiscriminatorConfig
from cdiff_jax.convert import stylegan2 as cv
from cdiff_jax.nn.stylegan2_discriminator import Discriminator, minibatch_stddev
from tests.conftest import assert_close_rel, nhwc


@pytest.fixture(scope="module")
def folder(fixtures_root):
    return fixtures_root / "stylegan2"


def test_logits_match_the_official_discriminator(folder):
    io = np.load(folder / "io.npz")
    d = cv.load_nvidia_discriminator(next(folder.glob("*.pkl")))
    graphdef, state = nnx.split(d)
    logits = jax.jit(lambda state, img: nnx.merge(graphdef, state)(img))(state, jnp.asarray(nhwc(io["img_const"])))
    assert_close_rel(logits, io["d_logits"], name="d_logits")


def _numpy_minibatch_stddev(x_nchw, group_size, num_channels):
    """The official layer's steps, in NCHW, in float64."""
    n, c, h, w = x_nchw.shape
    g = min(group_size, n)
    y = x_nchw.reshape(g, -1, num_channels, c // num_channels, h, w)
    y = y - y.mean(axis=0)
    y = np.sqrt(np.square(y).mean(axis=0) + 1e-8)
    y = y.mean(axis=(2, 3, 4)).reshape(-1, num_channels, 1, 1)
    y = np.tile(y, (g, 1, h, w))
    return np.concatenate([x_nchw, y], axis=1)


@pytest.mark.parametrize("batch,group_size,num_channels", [(8, 4, 1), (6, 3, 2), (3, 4, 1)])
def test_minibatch_stddev_formula(batch, group_size, num_channels):
    x = np.random.default_rng(batch).normal(size=(batch, 4, 4, 6))
    ours = minibatch_stddev(jnp.asarray(x, jnp.float32), group_size, num_channels)
    reference = _numpy_minibatch_stddev(np.transpose(x, (0, 3, 1, 2)), group_size, num_channels)
    assert_close_rel(np.transpose(np.asarray(ours), (0, 3, 1, 2)), reference, name="minibatch stddev")


def test_minibatch_stddev_needs_whole_groups():
    with pytest.raises(ValueError, match="batch 6 is not a multiple of the group size 4"):
        minibatch_stddev(jnp.zeros((6, 4, 4, 2)), 4, 1)


def test_fixture_and_released_state_dicts_map_completely(fixtures_root, folder):
    cases = [
        (
            json.loads((folder / "config.json").read_text())["D"]["init_kwargs"],
            json.loads((folder / "manifest.json").read_text())["D"],
        )
    ]
    for path in sorted((fixtures_root / "gan_real_manifests").glob("*.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("D_class") == "training.networks.Discriminator":
            cases.append((manifest["D_init_kwargs"], manifest["D"]))
    assert len(cases) > 1
    for kwargs, keys in cases:
        cfg = cv.discriminator_config_from_init_kwargs(kwargs)
        cv.check_key_map(cv.nvidia_discriminator_key_map(cfg), {k: tuple(s) for k, s, _ in keys}, cfg)


def test_conditional_discriminator_projects_on_the_label():
    cfg = StyleGAN2DiscriminatorConfig(c_dim=5, img_resolution=16, channel_base=128, channel_max=16, mapping_layers=2)
    assert StyleGAN2DiscriminatorConfig.from_json(cfg.to_json()) == cfg
    # Random weights drawn by numpy into the abstract model: eager initialisation would compile a
    # random-number program per parameter shape.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Discriminator(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), jnp.float32), state)
    run = jax.jit(lambda state, img, c: nnx.merge(graphdef, state)(img, c))
    img = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    c = jax.nn.one_hot(jnp.arange(4), 5)
    logits = run(state, img, c)
    assert logits.shape == (4, 1)
    other = run(state, img, jnp.roll(c, 1, axis=0))
    assert np.abs(np.asarray(logits - other)).max() > 1e-3 * np.abs(np.asarray(logits)).max()
    with pytest.raises(ValueError, match="conditional"):
        run(state, img, None)
    keys = set(cv.nvidia_discriminator_key_map(cfg))
    assert {"mapping.embed.weight", f"mapping.fc{cfg.mapping_layers - 1}.bias"} <= keys

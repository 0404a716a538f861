"""DDGI's reading of the frozen system: the right blocks, experts side by side, shapes the heads accept."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import StyleGAN2Config, UNetConfig, load_config
from cdiff_jax.ddgi.features import heads_config, level_blocks, read_features
from cdiff_jax.ddgi.heads import DDGIHeads
from cdiff_jax.modalities import kind_entry
from cdiff_jax.noise import normal
from cdiff_jax.system import init_system

GAN = StyleGAN2Config(z_dim=8, w_dim=16, img_resolution=16, channel_base=64, channel_max=16, mapping_layers=2)


# Two levels, attention at both: the tiny system's encoders with experts of the demo's shape, smaller.
EXPERT = UNetConfig(
    model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2), num_heads=2, context_dim=16
)


@pytest.fixture(scope="module")
def system():
    cfg = load_config("tiny_system.py")
    modalities = {n: dataclasses.replace(m, expert=EXPERT) for n, m in cfg.modalities.items()}
    return init_system(dataclasses.replace(cfg, modalities=modalities))


def _conditions(cfg, batch=2):
    rng = np.random.default_rng(0)
    conditions = {}
    for name, m in cfg.modalities.items():
        null = kind_entry(m.kind).null(m.encoder)
        if m.kind == "text":
            ids = np.repeat(null, batch, axis=0)
            ids[:, 1:4] = rng.integers(1000, 2000, (batch, 3))
            ids[:, 4] = 102
            conditions[name] = jnp.asarray(ids)
        else:
            conditions[name] = jnp.asarray(rng.integers(0, 2, (batch,) + null.shape[1:]).astype(np.float32))
    return conditions


def test_level_blocks_are_the_last_block_of_each_attention_level(system):
    for m in system.cfg.modalities.values():
        blocks = level_blocks(m.expert)
        unet = system.modalities[list(system.cfg.modalities)[0]].expert
        assert set(blocks) <= set(unet.cross_attention_up_blocks())
        assert blocks == (1, 3)  # two up blocks per level (num_res_blocks + 1), the second of each


@pytest.mark.slow
def test_two_experts_side_by_side_and_heads_that_fit(system):
    cfg = system.cfg
    names = tuple(cfg.modalities)
    conditions = _conditions(cfg)
    size = cfg.latent_size
    x = normal(jax.random.key(0), (2, size, size, cfg.autoencoder.embed_dim))
    t = jnp.array([10, 500])
    both = read_features(system, x, t, conditions, names)
    alone = [read_features(system, x, t, conditions, (n,)) for n in names]
    np.testing.assert_array_equal(both.middle, jnp.concatenate([a.middle for a in alone], -1))
    for i, a in enumerate(both.attention):
        np.testing.assert_array_equal(a, jnp.concatenate([s.attention[i] for s in alone], -1))
        np.testing.assert_allclose(a.sum(-1), len(names), rtol=1e-5)  # each expert's probabilities sum to 1
    # Content: caption words and the classes a mask shows, never markers or padding.
    for name, a in zip(names, alone):
        kind = cfg.modalities[name].kind
        if kind == "text":
            np.testing.assert_array_equal(a.content[:, :6], [[False, True, True, True, False, False]] * 2)
        else:
            np.testing.assert_array_equal(a.content, conditions[name].sum(-1) > 0)
    hcfg = heads_config(cfg, GAN, names, mapping_channels=8, modulation_channels=8)
    assert hcfg.middle == (both.middle.shape[1], both.middle.shape[-1])
    assert hcfg.levels == tuple((f.shape[1], f.shape[-1]) for f in both.decoder)
    heads = DDGIHeads(hcfg, rngs=nnx.Rngs(0))
    w_avg = jnp.zeros((GAN.w_dim,))
    codes = heads(both.middle, both.decoder, both.attention, both.content, w_avg)
    assert codes.w.shape == (2, GAN.num_ws, GAN.w_dim)


def test_unknown_expert_is_refused(system):
    with pytest.raises(ValueError, match="choose one or more"):
        heads_config(system.cfg, GAN, ("sketch",))

"""The denoiser's expert features (what DDGI reads): a pure function of the merged system, under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, reference_system
from flax import nnx

from cdiff_jax.config import TextEncoderConfig
from cdiff_jax.diffusion.collaboration import EqualWeights
from cdiff_jax.diffusion.denoiser import expert_features, predict


@pytest.fixture(scope="module")
def system(fixtures_root):
    return reference_system(fixtures_root, "codiff")


def _inputs(system, batch=2):
    """x_t, t and a random context per modality, sized from the system's config."""
    cfg = system.cfg
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)), jnp.float32)
    contexts = {}
    for name, m in cfg.modalities.items():
        tokens = m.encoder.max_len if isinstance(m.encoder, TextEncoderConfig) else m.encoder.num_classes
        contexts[name] = jnp.asarray(rng.normal(size=(batch, tokens, m.expert.context_dim)), jnp.float32)
    return x, jnp.asarray([17, 640][:batch]), contexts


def _run(system, fn, *args):
    graphdef, state = nnx.split(system)
    return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))(state, *args)


@pytest.mark.slow
def test_features_of_every_expert_at_its_cross_attention_levels(system):
    x, t, contexts = _inputs(system)
    features = _run(system, expert_features, x, t, contexts)
    assert sorted(features) == sorted(contexts)
    expert_eps = _run(system, lambda s, *a: predict(s, *a, EqualWeights()).expert_eps, x, t, contexts)
    for m, name in enumerate(contexts):
        eps, f = features[name]
        expert = system.modalities[name].expert
        blocks = expert.cross_attention_up_blocks()
        assert sorted(f.up) == sorted(f.cross_attention) == [f"output_block_{i:02d}" for i in blocks]
        for p in f.cross_attention.values():
            assert p.shape[0] == x.shape[0] and p.shape[2] == contexts[name].shape[1]
            np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
        alone = _run(system, lambda s, *a: s.modalities[name].expert(*a), x, t, contexts[name])
        np.testing.assert_array_equal(eps, alone)
        np.testing.assert_allclose(eps, expert_eps[m], rtol=1e-6, atol=1e-6 * np.abs(expert_eps[m]).max())


@pytest.mark.slow
def test_features_of_one_expert_at_chosen_blocks(system):
    x, t, contexts = _inputs(system, batch=1)
    name = list(contexts)[-1]
    features = _run(system, lambda s, *a: expert_features(s, *a, names=(name,), up_blocks=(0,)), x, t, contexts)
    assert list(features) == [name]
    _, inter = system.modalities[name].expert.forward_with_intermediates(x, t, contexts[name])  # eager: rounds apart
    assert_close_rel(features[name][1].up["output_block_00"], inter["output_block_00"], name="up block 0")
    assert_close_rel(features[name][1].middle, inter["middle_block"], name="middle")


def test_an_expert_without_a_context_is_refused(system):
    x, t, contexts = _inputs(system, batch=1)
    name = list(contexts)[0]
    with pytest.raises(ValueError, match=r"no context for \['nobody'\]"):
        expert_features(system, x, t, {name: contexts[name]}, names=(name, "nobody"))

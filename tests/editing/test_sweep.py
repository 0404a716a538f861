"""The alpha sweep: interpolated contexts, the same noise in every column, padding of the last call."""

import jax
import numpy as np
import pytest
from conftest import with_random_zero_layers
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.editing.sweep import alpha_sweep, interpolate
from cdiff_jax.noise import normal
from cdiff_jax.sampling import SamplerSettings, sample_from_contexts
from cdiff_jax.system import init_system

SETTINGS = SamplerSettings(steps=4, eta=1.0, reweighting=None)


@pytest.fixture(scope="module")
def setup():
    system = init_system(load_config("tiny_system.py"), seed=0)
    for modality in system.modalities.values():
        with_random_zero_layers(modality.expert)
    keys = iter(jax.random.split(jax.random.key(1), 8))
    targets = {n: normal(next(keys), (1, t, 16)) for n, t in (("mask", 19), ("text", 77))}
    optimised = {n: c + 0.5 * normal(next(keys), c.shape) for n, c in targets.items()}
    x_T = normal(next(keys), (2, 16, 16, 3))
    return system, targets, optimised, x_T


@pytest.mark.slow
def test_columns_are_the_interpolated_contexts_sampled_with_shared_noise(setup):
    system, targets, optimised, x_T = setup
    key = jax.random.key(9)
    alphas = {"mask": np.array([0.0, 1.0, 1.0]), "text": np.array([0.0, 1.0, 1.0])}
    images = alpha_sweep(system, targets, optimised, alphas, x_T, key, SETTINGS, per_call=2)
    assert images.shape == (3, 2, 32, 32, 3)
    np.testing.assert_array_equal(images[1], images[2])  # same alpha in two calls: the same images
    assert not np.allclose(images[0], images[1], atol=1e-3)
    # Column 0 is plain sampling from the optimised contexts with the sweep's noise.
    noise = normal(key, (4,) + x_T.shape)
    direct = sample_from_contexts(
        *nnx.split(system), optimised_contexts(optimised, x_T), x_T, key, SETTINGS, step_noise=noise
    ).images
    np.testing.assert_allclose(images[0], direct, atol=1e-5)


def optimised_contexts(optimised, x_T):
    return {n: np.repeat(np.asarray(c), x_T.shape[0], axis=0) for n, c in optimised.items()}


@pytest.mark.slow
def test_one_alpha_per_modality(setup):
    system, targets, optimised, x_T = setup
    alphas = {"mask": np.array([0.0, 1.0]), "text": np.array([1.0, 0.0])}
    both = alpha_sweep(system, targets, optimised, alphas, x_T[:1], jax.random.key(2), SETTINGS)
    mixed = {
        "mask": interpolate(targets["mask"], optimised["mask"], 0.0),
        "text": interpolate(targets["text"], optimised["text"], 1.0),
    }
    noise = normal(jax.random.key(2), (4, 1) + x_T.shape[1:])
    direct = sample_from_contexts(*nnx.split(system), mixed, x_T[:1], jax.random.key(2), SETTINGS, step_noise=noise)
    np.testing.assert_allclose(both[0], direct.images, atol=1e-5)
    with pytest.raises(ValueError, match="same number of alphas"):
        alpha_sweep(
            system, targets, optimised, {"mask": np.zeros(2), "text": np.zeros(3)}, x_T, jax.random.key(2), SETTINGS
        )

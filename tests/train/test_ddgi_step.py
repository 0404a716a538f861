"""DDGI's training stages: the identity start, which head each stage trains, and that training fits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import StyleGAN2Config, load_config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.heads import DDGIHeads
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.optimization import adam
from cdiff_jax.system import init_system
from cdiff_jax.train.ddgi_step import DDGIObjective, ddgi_images, ddgi_train_steps
from cdiff_jax.train.step import init_train_state

GAN = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channel_base=64, channel_max=8)
EXPERTS = ("text", "mask")
KEPT = 3


@pytest.fixture(scope="module")
def world():
    system = init_system(load_config("tiny_system.py"), seed=0)
    generator = Generator(GAN, rngs=nnx.Rngs(0))
    heads = DDGIHeads(heads_config(system.cfg, GAN, EXPERTS, mapping_channels=8, modulation_channels=8),
                      rngs=nnx.Rngs(1))
    cfg = system.cfg
    rng = np.random.default_rng(0)
    batch = {
        "x_t": jnp.asarray(rng.normal(size=(4, KEPT, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)),
                           jnp.float32),
        "image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
        "diffusion_image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
        "tokens": jnp.asarray(rng.integers(1000, 2000, (4, 77)), jnp.int32),
        "mask": jnp.asarray(np.eye(19, dtype=np.float32)[rng.integers(0, 19, (4, 1024))].transpose(0, 2, 1)),
    }
    timesteps = jnp.asarray([900, 500, 100], jnp.int32)
    return system, generator, heads, batch, timesteps


def test_both_stages_start_from_the_gan_s_average_face(world):
    system, generator, heads, batch, timesteps = world
    render = nnx.jit(ddgi_images, static_argnames=("objective",))
    for stage in ("ddgi_mapping", "ddgi_modulation"):
        images = render(heads, system, generator, batch, jnp.array([0, 1, 2, 1]), timesteps,
                        objective=DDGIObjective(stage, EXPERTS))
        average = generator.synthesis(jnp.broadcast_to(generator.mapping.w_avg[...], (1, GAN.num_ws, GAN.w_dim)),
                                      generator.synthesis.noises(1, "const", None, None))
        np.testing.assert_allclose(images, jnp.broadcast_to(average, images.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage, trained, kept", [("ddgi_mapping", "mapping", "modulation"),
                                                  ("ddgi_modulation", "modulation", "mapping")])
def test_each_stage_trains_its_head_only_and_fits_a_fixed_batch(world, stage, trained, kept):
    system, generator, heads, batch, timesteps = world
    graphdef, params, frozen_heads = nnx.split(heads, lambda path, v: isinstance(v, nnx.Param) and path[0] == trained,
                                               ...)
    tx = adam(3e-3)
    state = init_train_state(jax.tree.map(jnp.copy, params), tx)
    batches = jax.tree.map(lambda x: jnp.broadcast_to(x, (4, *x.shape)), batch)
    frozen = (nnx.split(system), nnx.split(generator))
    state, metrics = ddgi_train_steps(graphdef, frozen_heads, state, batches, frozen, timesteps, jax.random.key(0), tx,
                                      DDGIObjective(stage, EXPERTS))
    loss = np.asarray(metrics.loss)
    assert np.asarray(metrics.finite).all() and int(state.step) == 4
    assert loss[-1] < loss[0]  # the same examples, read at random cached steps
    changed = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(state.params),
                                                                            jax.tree.leaves(params))]
    assert max(changed) > 0
    assert all(path[0] == trained for path, _ in nnx.to_flat_state(state.params))
    assert all(path[0] == kept for path, _ in nnx.to_flat_state(frozen_heads))

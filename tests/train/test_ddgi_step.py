"""DDGI's training stages: the identity start, which head each stage trains, that training fits, and a tri-plane
GAN's loss at a lower rendering resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import EG3DConfig, StyleGAN2Config, load_config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.gan import gan_images
from cdiff_jax.ddgi.heads import DDGIHeads
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.optimization import adam
from cdiff_jax.system import init_system
from cdiff_jax.train.ddgi_step import DDGIObjective, ddgi_images, ddgi_loss, ddgi_train_steps, perceptual_distance
from cdiff_jax.train.stages import DDGIInputsAt
from cdiff_jax.train.step import init_train_state

GAN = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channel_base=64, channel_max=8)
# The toy world's 64x64 images (what the stage's area averaging reads), rendered at 8x8 below.
EG3D = EG3DConfig(z_dim=8, w_dim=8, img_resolution=64, neural_rendering_resolution=64, superresolution="none",
                  plane_resolution=16, plane_channels=4, mapping_layers=1, channel_base=64, channel_max=8,
                  depth_resolution=4, depth_resolution_importance=4)
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
    # G of its average code, compiled: op by op, the synthesis network's operations would each compile alone.
    average = nnx.jit(gan_images)(generator, jnp.broadcast_to(generator.mapping.w_avg[...], (1, GAN.num_ws, GAN.w_dim)),
                                  None)
    for stage in ("ddgi_mapping", "ddgi_modulation"):
        images = render(heads, system, generator, batch, jnp.array([0, 1, 2, 1]), timesteps,
                        objective=DDGIObjective(stage, EXPERTS))
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


def test_a_tri_plane_gan_trains_at_its_rendering_resolution_against_area_averaged_targets(world):
    """The stage's inputs area-average both 64x64 targets to the rendering resolution; the loss is G's rendering
    at that resolution (fresh heads: the average code) against them, L2 and perceptual."""
    system, _, _, batch, timesteps = world
    generator = TriPlaneGenerator(EG3D, rngs=nnx.Rngs(0))
    heads = DDGIHeads(heads_config(system.cfg, EG3D, EXPERTS, mapping_channels=8, modulation_channels=8),
                      rngs=nnx.Rngs(1))
    rng = np.random.default_rng(1)
    full = {name: rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for name in ("image", "diffusion_image")}
    records = [{"x_t": np.asarray(batch["x_t"][i]), "caption": "a man", "mask": np.zeros((32, 32), np.uint8),
                **{name: full[name][i] for name in full}} for i in range(4)]
    inputs = [DDGIInputsAt(8).map(r) for r in records]
    small = {name: np.stack([x[name] for x in inputs]) for name in inputs[0]}
    for name, images in full.items():  # 8x8 blocks of the [-1, 1] images, averaged
        expected = (images / 127.5 - 1).reshape(4, 8, 8, 8, 8, 3).mean(axis=(2, 4))
        np.testing.assert_allclose(small[name], expected, rtol=1e-5, atol=1e-6)
    key = jax.random.key(2)
    objective = DDGIObjective("ddgi_modulation", EXPERTS, ground_truth_weight=0.5, resolution=8)
    loss = nnx.jit(ddgi_loss, static_argnames=("objective",))(heads, system, generator, small, key, timesteps,
                                                              objective=objective)

    @nnx.jit
    def direct(generator, autoencoder):
        average = jnp.broadcast_to(generator.mapping.w_avg[...], (4, EG3D.num_ws, EG3D.w_dim))
        images = gan_images(generator, average, jax.random.fold_in(key, 1), resolution=8)  # ddgi_loss's draws
        terms = [jnp.mean(jnp.square(images - small[name])) + 0.8 * perceptual_distance(autoencoder, images,
                                                                                          small[name])
                 for name in ("diffusion_image", "image")]
        return images, terms[0] + 0.5 * terms[1]

    images, expected = direct(generator, system.autoencoder)
    assert images.shape == (4, 8, 8, 3)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)

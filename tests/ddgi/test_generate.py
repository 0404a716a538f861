"""DDGI at inference (`ddgi_sample`): the sampler stops at the step read, the W+ codes do not depend on whether
I^d_0 is made, and what it reads and makes is what the full sampler's trajectory and image are."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax import requests
from cdiff_jax.config import StyleGAN2Config, load_config
from cdiff_jax.ddgi import generate as G
from cdiff_jax.ddgi.features import heads_config, read_features
from cdiff_jax.ddgi.heads import DDGIHeads
from cdiff_jax.diffusion.schedule import alphas_cumprod
from cdiff_jax.latents import latent_shape
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.noise import normal
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.system import init_system

GAN = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channel_base=64, channel_max=8)
EXPERTS = ("text", "mask")
STEPS, BATCH = 4, 2


@pytest.fixture(scope="module")
def parts():
    system = init_system(load_config("tiny_system.py"), seed=0)
    generator = Generator(GAN, rngs=nnx.Rngs(0))
    heads = DDGIHeads(
        heads_config(system.cfg, GAN, EXPERTS, mapping_channels=8, modulation_channels=8), rngs=nnx.Rngs(0)
    )
    # Fresh heads give w_avg whatever they read; perturbed ones make codes that depend on x_t.
    leaves, tree = jax.tree.flatten(nnx.state(heads, nnx.Param))
    keys = jax.random.split(jax.random.key(5), len(leaves))
    nnx.update(heads, jax.tree.unflatten(tree, [p + 0.1 * normal(k, p.shape) for p, k in zip(leaves, keys)]))
    conditions, _ = requests.conditions(system.cfg, {"mask": str(requests.DEMO_MASK), "text": "a man"})
    conditions = {name: np.repeat(c, BATCH, axis=0) for name, c in conditions.items()}
    x_T = normal(jax.random.key(1), (BATCH,) + latent_shape(system.cfg))
    return system, heads, generator, conditions, x_T, jax.random.key(2)


def codes_read_from(parts, x_t, t):
    """The heads' codes at (x_t, t), as training and the toy evaluation read a recorded trajectory."""
    system, heads, generator, conditions, _, _ = parts
    f = read_features(system, x_t, jnp.full((BATCH,), t), conditions, EXPERTS)
    return heads(f.middle, f.decoder, f.attention, f.content, generator.mapping.w_avg[...]).w


@pytest.mark.slow
def test_the_codes_are_bit_identical_with_or_without_the_diffusion_image(parts):
    system, heads, generator, conditions, x_T, key = parts
    settings = SamplerSettings(steps=STEPS)  # DDIM with eta 1: the noise of each step must line up too
    alone = G.ddgi_sample(system, heads, generator, conditions, x_T, key, settings, 3, EXPERTS)
    both = G.ddgi_sample(system, heads, generator, conditions, x_T, key, settings, 3, EXPERTS, diffusion_images=True)
    assert alone.diffusion_images is None
    # The reading is one program, run on the same inputs whether the rest is sampled or not: equal bit for bit.
    np.testing.assert_array_equal(alone.ws, both.ws)
    np.testing.assert_array_equal(alone.images, both.images)

    full = sample(*nnx.split(system), conditions, x_T, key, SamplerSettings(steps=STEPS, record=True))
    expected = codes_read_from(parts, full.trajectory.x_t[2], full.trajectory.timesteps[2])
    assert float(jnp.abs(expected - generator.mapping.w_avg[...]).max()) > 1  # codes that depend on x_t
    # The x_t read is the full sampler's own; another program rounds its float32 sums differently.
    np.testing.assert_allclose(alone.ws, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both.diffusion_images, full.images, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_multistep_solver_carries_its_history_into_the_rest(parts):
    system, heads, generator, conditions, x_T, key = parts
    settings = SamplerSettings(steps=STEPS, solver="dpmpp")
    result = G.ddgi_sample(system, heads, generator, conditions, x_T, key, settings, 3, EXPERTS, diffusion_images=True)
    full = sample(*nnx.split(system), conditions, x_T, key, SamplerSettings(steps=STEPS, solver="dpmpp"))
    np.testing.assert_allclose(result.diffusion_images, full.images, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_step_one_reads_the_noise_without_sampling(parts):
    system, heads, generator, conditions, x_T, key = parts
    arguments = (
        *nnx.split(system),
        *nnx.split(heads),
        *nnx.split(generator),
        conditions,
        x_T,
        jnp.zeros((BATCH,), jnp.int32),
        key,
        SamplerSettings(steps=STEPS),
    )

    def loops(at_step):
        return G._read_program.lower(*arguments, at_step, EXPERTS).as_text().count("stablehlo.while")

    assert loops(1) == 0 and loops(2) > 0  # no sampler scan before the first step's read
    result = G.ddgi_sample(system, heads, generator, conditions, x_T, key, SamplerSettings(steps=STEPS), 1, EXPERTS)
    t = SamplerSettings(steps=STEPS).plan(alphas_cumprod(system.cfg.schedule)).timesteps[0]
    np.testing.assert_allclose(result.ws, codes_read_from(parts, x_T, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "at_step, settings, message",
    [
        (0, SamplerSettings(steps=STEPS), "steps 1..4"),
        (5, SamplerSettings(steps=STEPS), "steps 1..4"),
        (2, SamplerSettings(steps=STEPS, guided=("text",)), "without classifier-free guidance"),
    ],
)
def test_bad_settings_are_refused(parts, at_step, settings, message):
    system, heads, generator, conditions, x_T, key = parts
    with pytest.raises(ValueError, match=message):
        G.ddgi_sample(system, heads, generator, conditions, x_T, key, settings, at_step, EXPERTS)

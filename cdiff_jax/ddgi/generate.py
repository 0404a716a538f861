"""DDGI at inference: sample with the frozen system, read its UNets at one step, render the W+ code with G
(StyleGAN2, or EG3D at its training camera; `ws` renders at any other view afterwards).

One compiled program: the DDIM sampler runs all its steps (so I^d_0 comes out beside the GAN image), and
the experts are read at the input of step `at_step` (1 is x_T, `settings.steps` the last).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from cdiff_jax.ddgi.features import read_features
from cdiff_jax.ddgi.gan import gan_images
from cdiff_jax.sampling import SamplerSettings, sample


@struct.dataclass
class DDGIResult:
    images: jax.Array  # G(w_t) [B, R, R, 3] in about [-1, 1]
    ws: jax.Array  # the W+ codes w_t [B, num_ws, w_dim]
    diffusion_images: jax.Array  # I^d_0, the sampler's own decoded images


def ddgi_sample(system, heads, generator, conditions: dict, x_T: jax.Array, key: jax.Array,
                settings: SamplerSettings, at_step: int, experts: tuple[str, ...]) -> DDGIResult:
    """DDGI's images of `conditions` (as `sample` takes them); `experts` are the modalities the heads read."""
    if not 1 <= at_step <= settings.steps:
        raise ValueError(f"at_step {at_step}: DDGI reads one of the sampler's steps 1..{settings.steps}")
    settings = dataclasses.replace(settings, record=True)
    return _ddgi_sample(*nnx.split(system), *nnx.split(heads), *nnx.split(generator), conditions, x_T, key, settings,
                        at_step, experts)


@jax.jit(static_argnames=("system_graphdef", "heads_graphdef", "gan_graphdef", "settings", "at_step", "experts"))
def _ddgi_sample(system_graphdef, system_state, heads_graphdef, heads_state, gan_graphdef, gan_state, conditions,
                 x_T, key, settings, at_step, experts):
    result = sample(system_graphdef, system_state, conditions, x_T, key, settings)
    x_t, t = result.trajectory.x_t[at_step - 1], result.trajectory.timesteps[at_step - 1]
    system = nnx.merge(system_graphdef, system_state)
    generator = nnx.merge(gan_graphdef, gan_state)
    features = read_features(system, x_t, jnp.full((x_t.shape[0],), t), conditions, experts)
    codes = nnx.merge(heads_graphdef, heads_state)(features.middle, features.decoder, features.attention,
                                                   features.content, generator.mapping.w_avg[...])
    images = gan_images(generator, codes.w, jax.random.fold_in(key, at_step))
    return DDGIResult(images=images, ws=codes.w, diffusion_images=result.images)

"""DDGI at inference: sample with the frozen system up to the step DDGI reads, read its UNets there, render the W+
code with G (StyleGAN2, or EG3D at its training camera; `ws` renders at any other view afterwards).

The reading is one compiled program that runs only what it needs: the sampler's first `at_step - 1` steps (the
same scan, plan, noise and contexts as `cdiff_jax.sampling.sample`), the experts read at the input of step
`at_step` (1 is x_T itself, `settings.steps` the last), the heads and G: `at_step` model evaluations in all, so
DDGI at step 1 costs one UNet pass and no sampling. The diffusion model's own image I^d_0 is a second program,
run only when asked for (`diffusion_images=True`): it carries the sampler state on through the remaining steps
and decodes. The W+ codes come from the first program alone, the same compiled program on the same inputs either
way, so they are bit-identical whether I^d_0 is made or not.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from cdiff_jax.ddgi.features import read_features
from cdiff_jax.ddgi.gan import gan_images
from cdiff_jax.diffusion import solvers
from cdiff_jax.diffusion.denoiser import encode_conditions
from cdiff_jax.diffusion.schedule import alphas_cumprod
from cdiff_jax.sampling import SamplerSettings, solver_steps


@struct.dataclass
class DDGIResult:
    images: jax.Array  # G(w_t) [B, R, R, 3] in about [-1, 1]
    ws: jax.Array  # the W+ codes w_t [B, num_ws, w_dim]
    diffusion_images: jax.Array | None  # I^d_0, the sampler's own decoded images (None unless asked for)


def ddgi_sample(
    system,
    heads,
    generator,
    conditions: dict,
    x_T: jax.Array,
    key: jax.Array,
    settings: SamplerSettings,
    at_step: int,
    experts: tuple[str, ...],
    *,
    diffusion_images: bool = False,
) -> DDGIResult:
    """DDGI's images of `conditions` (as `sample` takes them); `experts` are the modalities the heads read.

    The sampler runs `at_step - 1` steps before the reading; with `diffusion_images` it then runs on to I^d_0, the
    image `sample` makes from the same x_T, key and settings."""
    if not 1 <= at_step <= settings.steps:
        raise ValueError(f"at_step {at_step}: DDGI reads one of the sampler's steps 1..{settings.steps}")
    if settings.guided:
        raise ValueError(
            "DDGI samples without classifier-free guidance (the heads were trained on unguided "
            "trajectories); give settings with guided=()"
        )
    settings = dataclasses.replace(settings, record=False)  # nothing is recorded: one program for either value
    plan = settings.plan(alphas_cumprod(system.cfg.schedule))
    # The timestep read is an input of the program, as in training and the toy evaluation (a constant could be
    # folded at compile time and round the time embedding differently).
    t = jnp.full((x_T.shape[0],), plan.timesteps[at_step - 1], jnp.int32)
    system_parts = nnx.split(system)
    images, ws, contexts, state = _read_program(
        *system_parts, *nnx.split(heads), *nnx.split(generator), conditions, x_T, t, key, settings, at_step, experts
    )
    diffusion = _finish_program(*system_parts, contexts, state, key, settings, at_step) if diffusion_images else None
    return DDGIResult(images=images, ws=ws, diffusion_images=diffusion)


@jax.jit(static_argnames=("system_graphdef", "heads_graphdef", "gan_graphdef", "settings", "at_step", "experts"))
def _read_program(
    system_graphdef,
    system_state,
    heads_graphdef,
    heads_state,
    gan_graphdef,
    gan_state,
    conditions,
    x_T,
    t,
    key,
    settings,
    at_step,
    experts,
):
    """(G's images, W+ codes, the contexts, the solver state at the input of step `at_step`)."""
    system = nnx.merge(system_graphdef, system_state)
    generator = nnx.merge(gan_graphdef, gan_state)
    contexts = encode_conditions(system, conditions)
    plan = settings.plan(alphas_cumprod(system.cfg.schedule))
    state, _ = solver_steps(system, contexts, None, plan, settings, solvers.initial(plan, x_T), key, 0, at_step - 1)
    features = read_features(system, solvers.current_sample(state), t, conditions, experts)
    codes = nnx.merge(heads_graphdef, heads_state)(
        features.middle, features.decoder, features.attention, features.content, generator.mapping.w_avg[...]
    )
    images = gan_images(generator, codes.w, jax.random.fold_in(key, at_step))
    return images, codes.w, contexts, state


@jax.jit(static_argnames=("system_graphdef", "settings", "at_step"))
def _finish_program(system_graphdef, system_state, contexts, state, key, settings, at_step):
    """I^d_0: the sampler's steps at_step .. the last from the state `_read_program` stopped at, decoded."""
    system = nnx.merge(system_graphdef, system_state)
    plan = settings.plan(alphas_cumprod(system.cfg.schedule))
    state, _ = solver_steps(system, contexts, None, plan, settings, state, key, at_step - 1, plan.timesteps.shape[0])
    return system.autoencoder.decode_latent(solvers.current_sample(state))

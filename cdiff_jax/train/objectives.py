"""Training losses as pure functions of a merged system and a batch.

The diffusion loss is the reference's: z0 = scale * posterior sample of the frozen
autoencoder, t ~ U{0..T-1}, z_t = q_sample(z0, t, eps), loss = mean((eps - eps_hat)^2), with
eps_hat the combined prediction under the plain softmax (collaboration) or one expert's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cdiff_jax.conditions import null_condition
from cdiff_jax.diffusion.denoiser import encode_conditions, predict
from cdiff_jax.diffusion.schedule import Schedule, q_sample
from cdiff_jax.latents import latent_shape
from cdiff_jax.modalities import KINDS, kind_entry
from cdiff_jax.noise import normal
from cdiff_jax.system import LatentDiffusionSystem

# Which batch field (from cdiff_jax.data.pipeline) conditions each kind of modality.
BATCH_KEYS = {kind: entry.batch_key for kind, entry in KINDS.items()}


def eps_loss(
    system: LatentDiffusionSystem,
    schedule: Schedule,
    z0: jax.Array,
    contexts: dict[str, jax.Array],
    t: jax.Array,
    noise: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """mean((noise - eps_hat)^2) and the noisy input, for given latents, contexts, t and noise."""
    x_noisy = q_sample(schedule, z0, t, noise)
    eps = predict(system, x_noisy, t, contexts).eps
    return jnp.mean((noise - eps) ** 2), x_noisy


def drop_conditions(system: LatentDiffusionSystem, conditions: dict, rate: float, key: jax.Array) -> dict:
    """Replace each example's condition by the modality's null condition with probability `rate`.

    This is what makes classifier-free guidance possible for experts we train; the released
    experts were trained without it.
    """
    if rate <= 0:
        return conditions
    dropped = {}
    for key_m, (name, cond) in zip(jax.random.split(key, len(conditions)), conditions.items()):
        null = jnp.asarray(null_condition(system.cfg.modalities[name]), cond.dtype)
        drop = jax.random.bernoulli(key_m, rate, (cond.shape[0],)).reshape((-1,) + (1,) * (cond.ndim - 1))
        dropped[name] = jnp.where(drop, null, cond)
    return dropped


def diffusion_loss(
    system: LatentDiffusionSystem,
    schedule: Schedule,
    batch: dict[str, jax.Array],
    key: jax.Array,
    condition_dropout: float = 0.0,
) -> jax.Array:
    """The training loss of a pipeline batch {"image": [-1, 1] NHWC, and each modality's batch field}."""
    k_post, k_t, k_noise, k_drop = jax.random.split(key, 4)
    images = batch["image"]
    posterior_noise = normal(k_post, images.shape[:1] + latent_shape(system.cfg, *images.shape[1:3]),
                                        images.dtype)
    z0 = jax.lax.stop_gradient(system.autoencoder.encode_latent(images, posterior_noise))
    conditions = {name: batch[condition_key(batch, m.kind)] for name, m in system.cfg.modalities.items()}
    conditions = drop_conditions(system, conditions, condition_dropout, k_drop)
    t = jax.random.randint(k_t, (images.shape[0],), 0, schedule.num_timesteps)
    noise = normal(k_noise, z0.shape, z0.dtype)
    return eps_loss(system, schedule, z0, encode_conditions(system, conditions), t, noise)[0]


def condition_key(batch: dict, kind: str) -> str:
    """The batch field of a kind, checked to be there (a dataset built before the kind existed lacks it)."""
    key = kind_entry(kind).batch_key
    if key not in batch:
        raise ValueError(f"the batch has no {key!r} field for the {kind} modality (it has {sorted(batch)}); "
                       f"rebuild the dataset with a {kind_entry(kind).example_field!r} field per example")
    return key


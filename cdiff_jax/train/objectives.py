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


def drop_conditions(system: LatentDiffusionSystem, conditions: dict, drops: dict[str, jax.Array]) -> dict:
    """Replace each example's condition by its modality's null condition where `drops[name]` ([B] bool) is set.

    This is what makes classifier-free guidance possible for experts we train; the released
    experts were trained without it.
    """
    dropped = dict(conditions)
    for name, drop in drops.items():
        cond = conditions[name]
        null = jnp.asarray(null_condition(system.cfg.modalities[name]), cond.dtype)
        dropped[name] = jnp.where(drop.reshape((-1,) + (1,) * (cond.ndim - 1)), null, cond)
    return dropped


def loss_draws(
    system: LatentDiffusionSystem, schedule: Schedule, images: jax.Array, key: jax.Array, condition_dropout: float = 0.0
) -> dict:
    """Every random draw of one step's loss, per example ([B, ...] leaves): the posterior sample's noise, t,
    the forward process's noise and which conditions drop. Drawn for the whole batch at once, so that a batch
    split into micro-batches (gradient accumulation) sees exactly the draws of the whole batch."""
    k_post, k_t, k_noise, k_drop = jax.random.split(key, 4)
    latent = images.shape[:1] + latent_shape(system.cfg, *images.shape[1:3])
    draws = {
        "posterior_noise": normal(k_post, latent, images.dtype),
        "t": jax.random.randint(k_t, (images.shape[0],), 0, schedule.num_timesteps),
        "noise": normal(k_noise, latent, images.dtype),
        "drops": {},
    }
    if condition_dropout > 0:
        names = list(system.cfg.modalities)
        draws["drops"] = {
            name: jax.random.bernoulli(k, condition_dropout, (images.shape[0],))
            for name, k in zip(names, jax.random.split(k_drop, len(names)))
        }
    return draws


def diffusion_loss(
    system: LatentDiffusionSystem, schedule: Schedule, batch: dict[str, jax.Array], draws: dict
) -> jax.Array:
    """The training loss of a pipeline batch {"image": [-1, 1] NHWC, and each modality's batch field} with the
    step's `loss_draws`."""
    z0 = jax.lax.stop_gradient(system.autoencoder.encode_latent(batch["image"], draws["posterior_noise"]))
    conditions = {name: batch[condition_key(batch, m.kind)] for name, m in system.cfg.modalities.items()}
    conditions = drop_conditions(system, conditions, draws["drops"])
    return eps_loss(system, schedule, z0, encode_conditions(system, conditions), draws["t"], draws["noise"])[0]


def condition_key(batch: dict, kind: str) -> str:
    """The batch field of a kind, checked to be there (a dataset built before the kind existed lacks it)."""
    key = kind_entry(kind).batch_key
    if key not in batch:
        raise ValueError(
            f"the batch has no {key!r} field for the {kind} modality (it has {sorted(batch)}); "
            f"rebuild the dataset with a {kind_entry(kind).example_field!r} field per example"
        )
    return key

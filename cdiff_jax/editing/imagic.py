"""Imagic for one expert: fit the condition embedding to an image (stage A), then the UNet (stage B).

Both stages minimise the expert's own training loss on one fixed latent of the input image,
mean((eps(q_sample(z0, t, n), t, c) - n)^2) with fresh t ~ U{0..T-1} and n ~ N(0, I) every
iteration, with Adam (torch's defaults): stage A over the context `c` with the expert frozen,
stage B over the expert's parameters with the optimised context fixed. Iteration i draws its
randomness from fold_in(key, i), so a stage run in chunks of any size gives the same result. The
iterations run in the package's optimisation loop (`cdiff_jax.optimization`): a non-finite loss or
gradient stops the stage with `NonFiniteStep`, which holds the last good state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cdiff_jax.diffusion.schedule import Schedule, q_sample
from cdiff_jax.noise import normal
from cdiff_jax.optimization import LoopPolicy, NonFiniteStep, adam, first_rejected, loop_policy, run_steps

STAGES = ("embedding", "finetune")


@dataclasses.dataclass(frozen=True)
class ImagicSettings:
    """The reference's defaults: stage A Adam lr 1e-3 x 500, stage B Adam lr 1e-6 x 1000."""

    embedding_lr: float = 1e-3
    embedding_iterations: int = 500
    finetune_lr: float = 1e-6
    finetune_iterations: int = 1000
    chunk: int | None = None  # iterations per device call; None: the loop policy's `edit_steps_per_call`


def imagic_loss(expert: nnx.Module, schedule: Schedule, z0: jax.Array, context: jax.Array, key: jax.Array) -> jax.Array:
    """The expert's eps loss on the latent z0 [B, h, w, c] at a random t, for the context [B, L, D]."""
    k_t, k_noise = jax.random.split(key)
    t = jax.random.randint(k_t, (z0.shape[0],), 0, schedule.num_timesteps)
    noise = normal(k_noise, z0.shape, z0.dtype)
    return jnp.mean((expert(q_sample(schedule, z0, t, noise), t, context) - noise) ** 2)


def optimise_embedding(
    expert: nnx.Module,
    schedule: Schedule,
    z0: jax.Array,
    context: jax.Array,
    key: jax.Array,
    settings: ImagicSettings = ImagicSettings(),
    progress: Callable | None = None,
):
    """Stage A: (optimised context, per-iteration losses), starting from the target `context`."""
    graphdef, params = nnx.split(expert)
    context, losses = _iterate(
        "embedding",
        graphdef,
        context,
        params,
        settings.embedding_lr,
        schedule,
        z0,
        key,
        settings.embedding_iterations,
        settings,
        progress,
    )
    return context, losses


def finetune_expert(
    expert: nnx.Module,
    schedule: Schedule,
    z0: jax.Array,
    context: jax.Array,
    key: jax.Array,
    settings: ImagicSettings = ImagicSettings(),
    progress: Callable | None = None,
):
    """Stage B: (fine-tuned expert parameters as an nnx.State, per-iteration losses) for a fixed context."""
    graphdef, params = nnx.split(expert)
    params, losses = _iterate(
        "finetune",
        graphdef,
        params,
        context,
        settings.finetune_lr,
        schedule,
        z0,
        key,
        settings.finetune_iterations,
        settings,
        progress,
    )
    return params, losses


def _iterate(stage, graphdef, trained, fixed, learning_rate, schedule, z0, key, iterations, settings, progress):
    """Run `iterations` Adam steps (torch's defaults, as the reference) on `trained`, `chunk` per call."""
    policy = loop_policy()
    chunk = settings.chunk or policy.edit_steps_per_call
    trained = jax.tree.map(jnp.copy, trained)  # the calls donate it; the caller keeps its own
    opt_state = adam(learning_rate).init(trained)
    losses = []
    done = 0
    while done < iterations:
        count = min(chunk, iterations - done)
        trained, opt_state, chunk_losses, applied = _adam_iterations(
            graphdef,
            trained,
            fixed,
            opt_state,
            schedule,
            z0,
            key,
            jnp.int32(done),
            stage=stage,
            learning_rate=learning_rate,
            count=count,
            policy=policy,
        )
        rejected = first_rejected(applied)
        if rejected is not None:
            bad = done + rejected + 1
            raise NonFiniteStep(
                f"Imagic stage {stage!r}: non-finite loss or gradient at iteration {bad}; "
                "check the image's latent and the learning rate",
                bad,
                trained,
            )
        losses.append(np.asarray(chunk_losses))
        done += count
        if progress is not None:
            progress(done, iterations, float(losses[-1].mean()))
    return trained, np.concatenate(losses) if losses else np.zeros((0,), np.float32)


@jax.jit(
    static_argnames=("graphdef", "stage", "learning_rate", "count", "policy"), donate_argnames=("trained", "opt_state")
)
def _adam_iterations(
    graphdef, trained, fixed, opt_state, schedule, z0, key, start, *, stage, learning_rate, count, policy: LoopPolicy
):
    tx = adam(learning_rate)  # built here, not passed: an optax object is a new static argument every time

    def loss_fn(variable, iteration_key):
        if stage == "embedding":  # the variable is the context, `fixed` the expert's parameters
            return imagic_loss(nnx.merge(graphdef, fixed), schedule, z0, variable, iteration_key)
        return imagic_loss(nnx.merge(graphdef, variable), schedule, z0, fixed, iteration_key)

    def one_iteration(carry, i):
        variable, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(variable, jax.random.fold_in(key, start + i))
        updates, opt_state = tx.update(grads, opt_state, variable)
        return (optax.apply_updates(variable, updates), opt_state), loss, (loss, optax.tree.norm(grads))

    (trained, opt_state), losses, applied = run_steps(one_iteration, (trained, opt_state), jnp.arange(count), policy)
    return trained, opt_state, losses, applied

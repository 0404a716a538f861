"""Sampling an edit: embeddings interpolated between the target and the optimised one, one alpha per column.

Per modality e(alpha) = alpha * e_target + (1 - alpha) * e_optimised: alpha 0 reproduces the
input image (after stage B), alpha 1 asks for the target, alpha > 1 extrapolates. Every alpha
starts from the same x_T and draws the same per-step noise, as the reference re-seeds before
each alpha, so the columns differ only by the edit strength.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.diffusion.solvers import visited_timesteps
from cdiff_jax.noise import normal
from cdiff_jax.sampling import SamplerSettings, sample_from_contexts


def interpolate(target: jax.Array, optimised: jax.Array, alpha) -> jax.Array:
    return alpha * target + (1 - alpha) * optimised


def alpha_sweep(
    system,
    targets: dict[str, jax.Array],
    optimised: dict[str, jax.Array],
    alphas: dict[str, np.ndarray],
    x_T: jax.Array,
    key: jax.Array,
    settings: SamplerSettings,
    per_call: int = 4,
    on_step=None,
) -> np.ndarray:
    """Images [K, n, H, W, 3] for K alphas (per modality, equal lengths) and n starting points x_T [n, ...].

    Contexts are [1, L, D] per modality. `per_call` alphas are sampled per device call (the last call
    is padded), which bounds memory at the large resolutions. `on_step` reports the steps of each call
    (see `sample`).
    """
    names = tuple(targets)
    count = len(alphas[names[0]])
    if any(len(alphas[n]) != count for n in names):
        raise ValueError(f"every modality needs the same number of alphas, got { {n: len(alphas[n]) for n in names} }")
    n = x_T.shape[0]
    steps = len(visited_timesteps(settings.solver, settings.spacing, system.cfg.schedule.timesteps, settings.steps))
    noise = normal(key, (steps,) + x_T.shape, x_T.dtype)
    graphdef, state = nnx.split(system)
    per_call = min(per_call, count)
    images = []
    for start in range(0, count, per_call):
        chosen = np.minimum(np.arange(start, start + per_call), count - 1)  # pad by repeating the last alpha
        contexts = {}
        for name in names:
            a = jnp.asarray(np.asarray(alphas[name], np.float32)[chosen])[:, None, None, None]  # [k, 1, 1, 1]
            mixed = interpolate(targets[name][None], optimised[name][None], a)[:, 0]  # [k, L, D]
            contexts[name] = jnp.repeat(mixed, n, axis=0)
        tiled_x = jnp.tile(x_T, (per_call, 1, 1, 1))
        tiled_noise = jnp.tile(noise, (1, per_call, 1, 1, 1))
        result = sample_from_contexts(
            graphdef, state, contexts, tiled_x, key, settings, step_noise=tiled_noise, on_step=on_step
        )
        batch = np.asarray(result.images).reshape((per_call, n) + result.images.shape[1:])
        images.append(batch[: min(per_call, count - start)])
    return np.concatenate(images)

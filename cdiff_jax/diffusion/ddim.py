"""DDIM as in the reference: pure functions over an explicit per-step coefficient table.

Timesteps for S steps are arange(0, T, T // S) + 1 (or diffusers' "linspace" spacing), visited in
descending order; the last step's alpha_prev is abar[t_0] (not 1); sigma is computed in float64 from
the float32 abar values; pred_x0 is not clipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class DDIMCoefficients:
    """Per-step constants in sampling (descending-t) order, each [S]."""

    timesteps: jax.Array  # int32
    a_t: jax.Array
    a_prev: jax.Array
    sigma: jax.Array
    sqrt_one_minus_a_t: jax.Array


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "leading") -> np.ndarray:
    """Ascending DDIM timesteps. "leading" is the reference's arange(0, T, T // S) + 1; "linspace"
    is diffusers' linspace(0, T - 1, S) rounded.

    When S does not divide T "leading" gives more than S steps (S=30: 31), as in the reference;
    when the last one would be T (S=3: 1000) the reference fails and so do we, with advice.
    """
    if not 1 <= steps < num_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_timesteps - 1}, got {steps}")
    if spacing == "linspace":
        return np.linspace(0, num_timesteps - 1, steps).round().astype(np.int64)
    if spacing != "leading":
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of: leading, linspace")
    timesteps = np.arange(0, num_timesteps, num_timesteps // steps, dtype=np.int64) + 1
    if timesteps[-1] >= num_timesteps:
        raise ValueError(
            f"{steps} DDIM steps would visit t={timesteps[-1]} beyond the {num_timesteps}-step schedule "
            f"with the reference's spacing; use a step count that divides {num_timesteps} (e.g. 10, 20, 25, 50)"
        )
    return timesteps


def ddim_coefficients(alphas_cumprod: np.ndarray, steps: int, eta: float, spacing: str = "leading") -> DDIMCoefficients:
    """Coefficients from the float32 abar table, built on the host (they are compile-time constants)."""
    abar = np.asarray(alphas_cumprod, np.float32)
    ascending = ddim_timesteps(len(abar), steps, spacing)
    a_t = abar[ascending]
    a_prev = np.concatenate([abar[:1], abar[ascending[:-1]]])
    a_t64, a_prev64 = a_t.astype(np.float64), a_prev.astype(np.float64)
    sigma = eta * np.sqrt((1 - a_prev64) / (1 - a_t64) * (1 - a_t64 / a_prev64))
    order = slice(None, None, -1)
    return DDIMCoefficients(
        timesteps=jnp.asarray(ascending[order], jnp.int32),
        a_t=jnp.asarray(a_t[order]),
        a_prev=jnp.asarray(a_prev[order].astype(np.float32)),
        sigma=jnp.asarray(sigma[order].astype(np.float32)),
        sqrt_one_minus_a_t=jnp.asarray(np.sqrt(np.float32(1) - a_t)[order]),
    )


def ddim_step(
    x: jax.Array, eps: jax.Array, a_t, a_prev, sigma, sqrt_one_minus_a_t, noise: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One DDIM update; returns (x_prev, pred_x0). Scalars are one step's coefficients."""
    pred_x0 = (x - sqrt_one_minus_a_t * eps) / jnp.sqrt(a_t)
    direction = jnp.sqrt(1.0 - a_prev - sigma**2) * eps
    x_prev = jnp.sqrt(a_prev) * pred_x0 + direction + sigma * noise
    return x_prev, pred_x0

"""The DDPM noise schedule: computed in float64 like the reference, used in float32.

`Schedule` is a pytree of arrays so it can be passed into jitted samplers and losses as an
explicit argument instead of living on a model object.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cdiff_jax.config import ScheduleConfig


@struct.dataclass
class Schedule:
    betas: jax.Array  # [T] float32
    alphas_cumprod: jax.Array  # [T] float32, abar_t

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def linear_betas(cfg: ScheduleConfig) -> np.ndarray:
    """betas = linspace(sqrt(start), sqrt(end), T) ** 2 in float64 (the LDM "linear" schedule)."""
    return np.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=np.float64) ** 2


def alphas_cumprod(cfg: ScheduleConfig) -> np.ndarray:
    """abar_t as the reference stores it: cumprod in float64, then float32."""
    return np.cumprod(1.0 - linear_betas(cfg)).astype(np.float32)


def make_schedule(cfg: ScheduleConfig) -> Schedule:
    return Schedule(
        betas=jnp.asarray(linear_betas(cfg), jnp.float32),
        alphas_cumprod=jnp.asarray(alphas_cumprod(cfg)),
    )


def reference_buffers(cfg: ScheduleConfig) -> dict[str, np.ndarray]:
    """The 12 schedule buffers official checkpoints carry, as float32, for checking a checkpoint."""
    betas = linear_betas(cfg)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    buffers = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }
    return {name: value.astype(np.float32) for name, value in buffers.items()}


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, per example t."""
    abar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise

"""Multistep solvers in data-prediction form as one linear update over an explicit history.

DPM-Solver++ and UniPC both advance x with a linear combination of the current sample, the previous
(corrected) sample and the last few data predictions x0 = (x - sigma eps) / alpha. Which terms and with
which weights depends only on the schedule and the step's order, so the weights are computed once on
the host (`dpm_solver.py`, `unipc.py`, in float64) and the compiled step is the same few multiply-adds
at every step: the history lives in the scan carry and memory does not grow with the number of steps.

Notation as diffusers: sigmas are sqrt((1 - abar) / abar) at the visited timesteps (float32, a final
0 appended: the last step lands on the data prediction), alpha = 1 / sqrt(sigma^2 + 1),
sigma_t = sigma alpha, lambda = log(alpha / sigma_t).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SPACINGS = ("leading", "linspace")


def multistep_timesteps(num_timesteps: int, steps: int, spacing: str) -> np.ndarray:
    """The S timesteps a multistep solver visits, descending, as diffusers spaces them: S + 1 points
    of which the last (t = 0, sigma 0) is the end point, never evaluated. "leading" counts from 0 in
    strides of T // (S + 1) and adds the offset 1 of the released models' DDIM."""
    if not 1 <= steps < num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps - 1} for a {num_timesteps}-step schedule, got {steps}")
    if spacing == "linspace":
        points = np.linspace(0, num_timesteps - 1, steps + 1).round()
    elif spacing == "leading":
        points = np.arange(steps + 1) * (num_timesteps // (steps + 1)) + 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of: {', '.join(SPACINGS)}")
    return points[::-1][:-1].astype(np.int64)


def alphas_sigmas_lambdas(alphas_cumprod: np.ndarray, timesteps: np.ndarray):
    """(alpha, sigma_t, lambda), each [S + 1] in float64: the visited timesteps, then the end point
    (alpha 1, sigma 0, lambda +inf). The sigmas are diffusers' float32 values."""
    abar = np.asarray(alphas_cumprod, np.float32)[timesteps]
    sigmas = np.append(np.sqrt((np.float32(1) - abar) / abar), np.float32(0)).astype(np.float64)
    alpha = 1.0 / np.sqrt(sigmas**2 + 1.0)
    sigma_t = sigmas * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma_t)
    return alpha, sigma_t, lam


@struct.dataclass
class MultistepPlan:
    """Per-step weights in sampling order, each with a leading step axis S. The history is
    [x0 of this step, x0 of the step before, ...] (K entries).

    The step: x0 = (x - sigma eps) / alpha; corrected = x * keep + previous * from_previous
    + history . correct (the corrector, UniPC's; keep 1 and nothing else without one);
    next x = corrected * from_corrected + history . predict.
    """

    timesteps: jax.Array  # [S] int32
    alpha: jax.Array  # [S]
    sigma: jax.Array  # [S]
    keep: jax.Array  # [S]
    from_previous: jax.Array  # [S]
    correct: jax.Array  # [S, K]
    from_corrected: jax.Array  # [S]
    predict: jax.Array  # [S, K]


def plan_from_rows(timesteps: np.ndarray, alpha: np.ndarray, sigma: np.ndarray, rows: list[dict]) -> MultistepPlan:
    """A plan from per-step dicts of weights (float64, any of keep / from_previous / correct / from_corrected /
    predict; the identity corrector where absent), stored as float32."""
    depth = max(len(row.get(name, ())) for row in rows for name in ("correct", "predict"))

    def column(name, default):
        return jnp.asarray(np.array([row.get(name, default) for row in rows], np.float64).astype(np.float32))

    def matrix(name):
        padded = np.zeros((len(rows), depth))
        for i, row in enumerate(rows):
            weights = row.get(name, ())
            padded[i, : len(weights)] = weights
        return jnp.asarray(padded.astype(np.float32))

    return MultistepPlan(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        alpha=jnp.asarray(alpha[: len(rows)].astype(np.float32)),
        sigma=jnp.asarray(sigma[: len(rows)].astype(np.float32)),
        keep=column("keep", 1.0),
        from_previous=column("from_previous", 0.0),
        correct=matrix("correct"),
        from_corrected=column("from_corrected", 0.0),
        predict=matrix("predict"),
    )


@struct.dataclass
class MultistepState:
    x: jax.Array  # the sample the model sees next
    previous: jax.Array  # the (corrected) sample the last step started from
    history: jax.Array  # [K, ...] data predictions, newest first


def initial_state(plan: MultistepPlan, x_T: jax.Array) -> MultistepState:
    depth = plan.predict.shape[-1]
    return MultistepState(x=x_T, previous=jnp.zeros_like(x_T), history=jnp.zeros((depth,) + x_T.shape, x_T.dtype))


def multistep_step(state: MultistepState, eps: jax.Array, row: MultistepPlan) -> tuple[MultistepState, jax.Array]:
    """One step with one row of the plan; returns (next state, this step's data prediction)."""
    x0 = (state.x - row.sigma * eps) / row.alpha
    history = jnp.concatenate([x0[None], state.history[:-1]])

    def combine(weights, terms):
        return jnp.tensordot(weights, terms, axes=1)

    corrected = state.x * row.keep + state.previous * row.from_previous + combine(row.correct, history)
    x_next = corrected * row.from_corrected + combine(row.predict, history)
    return MultistepState(x=x_next, previous=corrected, history=history), x0

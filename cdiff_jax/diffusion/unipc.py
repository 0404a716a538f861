"""UniPC multistep (Zhao et al. 2023) in data-prediction form, B(h) = e^h - 1 ("bh2"), as diffusers
runs it by default.

Each step first corrects the sample the model was just evaluated at (UniC, using the new prediction and
the order of the step before), then predicts the next one (UniP) from the corrected sample. Orders warm
up (order k needs k predictions) and fall on the last steps (`lower_order_final`). Updates are written
as in the paper over vectors of weights on the history [m_i, m_{i-1}, ...] (newest first), which gives
the plan's weights directly.
"""

from __future__ import annotations

import math

import numpy as np

from cdiff_jax.diffusion.multistep import MultistepPlan, alphas_sigmas_lambdas, multistep_timesteps, plan_from_rows

ORDERS = (1, 2, 3)


def _r_and_b(rks: np.ndarray, h: float, order: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The linear system of the B(h) variant: R [order, order], b [order], h phi_1(h) and B(h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    rows, b, factorial = [], [], 1
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return np.stack(rows), np.array(b), h_phi_1, b_h


def _update(
    lam: np.ndarray,
    alpha: np.ndarray,
    sigma: np.ndarray,
    start: int,
    end: int,
    order: int,
    newest: np.ndarray,
    older: list[np.ndarray],
    corrector_input: np.ndarray | None,
):
    """The weights of one UniP (corrector_input None) or UniC update from the sample at `start` to `end`:
    (weight of the starting sample, weights on the history). `newest` is m0 of the update, `older`
    the predictions before it (at start - 1, start - 2, ...), `corrector_input` UniC's new prediction."""
    h = lam[end] - lam[start]
    rks = np.array([(lam[start - k] - lam[start]) / h for k in range(1, order)] + [1.0])
    differences = [(m - newest) / rk for m, rk in zip(older[: order - 1], rks)]
    r, b, h_phi_1, b_h = _r_and_b(rks, h, order)
    update = -alpha[end] * h_phi_1 * newest
    if corrector_input is None:
        if differences:
            rhos = np.array([0.5]) if order == 2 else np.linalg.solve(r[:-1, :-1], b[:-1])
            update = update - alpha[end] * b_h * sum(rho * d for rho, d in zip(rhos, differences))
    else:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(r, b)
        residual = sum((rho * d for rho, d in zip(rhos[:-1], differences)), np.zeros_like(newest))
        update = update - alpha[end] * b_h * (residual + rhos[-1] * (corrector_input - newest))
    return sigma[end] / sigma[start], update


def unipc_plan(alphas_cumprod: np.ndarray, steps: int, order: int, spacing: str = "linspace") -> MultistepPlan:
    if order not in ORDERS:
        raise ValueError(f"UniPC has orders {ORDERS}, got {order}")
    timesteps = multistep_timesteps(len(alphas_cumprod), steps, spacing)
    alpha, sigma, lam = alphas_sigmas_lambdas(alphas_cumprod, timesteps)
    history = list(np.eye(order + 1))  # this step's prediction, then the ones before
    rows, previous_order = [], 0
    for i in range(steps):
        row = {}
        if i > 0:  # UniC: correct the sample at i (started from i - 1) with the prediction just made
            with_previous, correct = _update(
                lam, alpha, sigma, i - 1, i, previous_order, history[1], history[2:], corrector_input=history[0]
            )
            row = {"keep": 0.0, "from_previous": with_previous, "correct": correct}
        this_order = min(order, steps - i, i + 1)
        with np.errstate(divide="ignore", invalid="ignore"):  # the last step (sigma 0) is first order
            from_corrected, predict = _update(lam, alpha, sigma, i, i + 1, this_order, history[0], history[1:], None)
        rows.append(row | {"from_corrected": from_corrected, "predict": predict})
        previous_order = this_order
    return plan_from_rows(timesteps, alpha, sigma, rows)

"""DPM-Solver++ multistep (Lu et al. 2022), orders 1-3, as diffusers runs it by default.

Midpoint form of order 2; "lower order final": the last step is first order (it lands on sigma 0, the
data prediction itself) and with fewer than 15 steps the one before it at most second order; the first
steps warm up (order k needs k predictions). Every update is written as in the paper, over vectors of
weights on the history [m0, m1, m2] (this step's data prediction first) instead of over arrays, which
gives the plan's weights directly.
"""

from __future__ import annotations

import numpy as np

from cdiff_jax.diffusion.multistep import MultistepPlan, alphas_sigmas_lambdas, multistep_timesteps, plan_from_rows

ORDERS = (1, 2, 3)


def step_order(order: int, step: int, steps: int) -> int:
    """The order diffusers uses at `step` (0-based) of `steps`."""
    if step == steps - 1:
        return 1
    if step == steps - 2 and steps < 15:
        order = min(order, 2)
    return min(order, step + 1)


def dpm_solver_plan(alphas_cumprod: np.ndarray, steps: int, order: int, spacing: str = "linspace") -> MultistepPlan:
    if order not in ORDERS:
        raise ValueError(f"DPM-Solver++ has orders {ORDERS}, got {order}")
    timesteps = multistep_timesteps(len(alphas_cumprod), steps, spacing)
    alpha, sigma, lam = alphas_sigmas_lambdas(alphas_cumprod, timesteps)
    m0, m1, m2 = np.eye(3)
    rows = []
    for i in range(steps):
        k = step_order(order, i, steps)
        with np.errstate(invalid="ignore"):  # h is +inf on the last step, which is first order
            h = lam[i + 1] - lam[i]
        a_t, phi = alpha[i + 1], np.expm1(-h)  # phi = exp(-h) - 1
        update = -a_t * phi * m0
        if k == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            update = update - 0.5 * a_t * phi * (m0 - m1) / r0
        elif k == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            update = update + a_t * (phi / h + 1.0) * d1 - a_t * ((phi + h) / h**2 - 0.5) * d2
        rows.append({"from_corrected": sigma[i + 1] / sigma[i], "predict": update[:order]})
    return plan_from_rows(timesteps, alpha, sigma, rows)

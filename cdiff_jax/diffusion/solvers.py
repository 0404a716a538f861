"""The solvers the one-program sampler runs, by name: a plan of per-step constants built on the host,
a state carried through the scan, and one pure step.

DDIM is the released scripts' sampler (stochastic with eta > 0, and the default); DPM-Solver++ and
UniPC are deterministic multistep solvers that reach its quality in fewer steps (README, "Fast
sampling"). Every solver takes the eps the system predicts at the integer timestep it hands out, so
the collaboration and its influence maps are computed at every evaluation as with DDIM.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from cdiff_jax.diffusion import dpm_solver, unipc
from cdiff_jax.diffusion.ddim import DDIMCoefficients, ddim_coefficients, ddim_step, ddim_timesteps
from cdiff_jax.diffusion.multistep import (
    SPACINGS,
    MultistepPlan,
    MultistepState,
    initial_state,
    multistep_step,
    multistep_timesteps,
)


@dataclasses.dataclass(frozen=True)
class Solver:
    orders: tuple[int, ...]
    default_order: int
    default_spacing: str
    stochastic: bool  # takes eta and fresh noise every step
    title: str


SOLVERS = {
    "ddim": Solver((1,), 1, "leading", True, "DDIM (the released scripts')"),
    "dpmpp": Solver(dpm_solver.ORDERS, 2, "linspace", False, "DPM-Solver++ multistep"),
    "unipc": Solver(unipc.ORDERS, 2, "linspace", False, "UniPC multistep (bh2)"),
}


def resolve(name: str, order: int | None, spacing: str | None) -> tuple[int, str]:
    """(order, spacing) with the solver's defaults filled in; ValueError (one line) for what it lacks."""
    if name not in SOLVERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of: {', '.join(SOLVERS)}")
    solver = SOLVERS[name]
    order = solver.default_order if order is None else order
    if order not in solver.orders:
        raise ValueError(f"sampler {name!r} has order(s) {', '.join(map(str, solver.orders))}, not {order}")
    spacing = solver.default_spacing if spacing is None else spacing
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of: {', '.join(SPACINGS)}")
    return order, spacing


def visited_timesteps(name: str, spacing: str | None, num_timesteps: int, steps: int) -> np.ndarray:
    """The timesteps `steps` steps of solver `name` evaluate the model at, in sampling order (DDIM's
    "leading" spacing can visit more than `steps`: ddim_timesteps); ValueError (one line) if it cannot."""
    _, spacing = resolve(name, None, spacing)
    if name == "ddim":
        return ddim_timesteps(num_timesteps, steps, spacing)[::-1]
    return multistep_timesteps(num_timesteps, steps, spacing)


def make_plan(
    name: str, order: int | None, spacing: str | None, alphas_cumprod: np.ndarray, steps: int, eta: float
) -> DDIMCoefficients | MultistepPlan:
    """The per-step constants of `steps` steps of solver `name` on the schedule `alphas_cumprod`."""
    order, spacing = resolve(name, order, spacing)
    if name == "ddim":
        return ddim_coefficients(alphas_cumprod, steps, eta, spacing)
    build = dpm_solver.dpm_solver_plan if name == "dpmpp" else unipc.unipc_plan
    return build(np.asarray(alphas_cumprod), steps, order, spacing)


def initial(plan: DDIMCoefficients | MultistepPlan, x_T: jax.Array):
    return x_T if isinstance(plan, DDIMCoefficients) else initial_state(plan, x_T)


def current_sample(state) -> jax.Array:
    """The sample the model is evaluated at (and, after the last step, the result)."""
    return state.x if isinstance(state, MultistepState) else state


def step(state, eps: jax.Array, row: DDIMCoefficients | MultistepPlan, noise: jax.Array | None):
    """One step with one row of the plan; returns (next state, this step's data prediction)."""
    if isinstance(row, DDIMCoefficients):
        return ddim_step(state, eps, row.a_t, row.a_prev, row.sigma, row.sqrt_one_minus_a_t, noise)
    return multistep_step(state, eps, row)

"""Every solver against diffusers' trajectories (fixtures/solvers, README there): each step's sample to 1e-5
relative, for whatever cases, shapes and step counts the fixture set holds; and the solvers' accuracy on
the Gaussian data whose probability-flow ODE has a closed form."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, reference_root

from cdiff_jax.diffusion import solvers
from cdiff_jax.diffusion.dpm_solver import step_order
from cdiff_jax.diffusion.multistep import multistep_timesteps


def load_cases():
    root = reference_root() / "solvers"
    if not (root / "cases.json").is_file():
        pytest.fail(
            f"no solver fixtures at {root} (cases.json): set CDIFF_REFERENCE_FIXTURES to the fixture root",
            pytrace=False,
        )
    return json.loads((root / "cases.json").read_text()), np.load(root / "trajectories.npz")


def solver_of(scheduler: str, config: dict) -> tuple[str, int, str]:
    """(our solver, order, spacing) for a diffusers scheduler config, refusing settings we do not run."""
    expected = {"prediction_type": "epsilon", "thresholding": False}
    if config["timestep_spacing"] == "leading":
        expected["steps_offset"] = 1  # the released models' offset, which "leading" means here
    if scheduler == "DDIMScheduler":
        name, order = "ddim", 1
        expected |= {"set_alpha_to_one": False, "clip_sample": False}
    elif scheduler == "DPMSolverMultistepScheduler":
        name, order = "dpmpp", config["solver_order"]
        expected |= {
            "algorithm_type": "dpmsolver++",
            "solver_type": "midpoint",
            "lower_order_final": True,
            "euler_at_final": False,
            "final_sigmas_type": "zero",
            "use_karras_sigmas": False,
        }
    elif scheduler == "UniPCMultistepScheduler":
        name, order = "unipc", config["solver_order"]
        expected |= {
            "predict_x0": True,
            "solver_type": "bh2",
            "lower_order_final": True,
            "disable_corrector": [],
            "final_sigmas_type": "zero",
            "use_karras_sigmas": False,
        }
    else:
        raise AssertionError(f"no solver of ours for {scheduler}")
    different = {k: config[k] for k, v in expected.items() if config[k] != v}
    assert not different, f"{scheduler}: settings we do not run: {different}"
    return name, order, config["timestep_spacing"]


def noise_predictor(kind: str, meta: dict, data):
    """The fixture's analytic eps(x, t) for NCHW samples and an integer timestep."""
    abar = jnp.asarray(np.asarray(data["alphas_cumprod"], np.float32))
    if kind == "tanh":
        a, b = meta["eps"]["a"], meta["eps"]["b"]
        return lambda x, t: a * jnp.tanh((0.5 + t / 2000) * x) + b * (t / 1000) * jnp.sin(x)
    mu = jnp.asarray(data["gauss_mu"], jnp.float32)[:, None, None]
    s = jnp.asarray(data["gauss_s"], jnp.float32)[:, None, None]

    def gauss(x, t):
        a_t = abar[t]
        return jnp.sqrt(1 - a_t) * (x - jnp.sqrt(a_t) * mu) / (a_t * s**2 + 1 - a_t)

    return gauss


def run(plan, x_T, eps_fn):
    """Every step's sample of the plan from x_T with a deterministic predictor."""

    def body(state, row):
        x = solvers.current_sample(state)
        noise = jnp.zeros_like(x) if isinstance(plan, solvers.DDIMCoefficients) else None
        state, _ = solvers.step(state, eps_fn(x, row.timesteps), row, noise)
        return state, solvers.current_sample(state)

    return jax.jit(lambda p, x: jax.lax.scan(body, solvers.initial(p, x), p)[1])(plan, x_T)


META, DATA = load_cases()


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_every_step_matches_diffusers(case):
    entry = META["cases"][case]
    name, order, spacing = solver_of(entry["scheduler"], entry["config"])
    plan = solvers.make_plan(
        name, order, spacing, np.asarray(DATA["alphas_cumprod"], np.float32), entry["steps"], eta=0.0
    )
    np.testing.assert_array_equal(plan.timesteps, DATA[f"{case}/timesteps"])
    xs = np.asarray(run(plan, jnp.asarray(DATA["x_T"]), noise_predictor(case.split("/")[0], META, DATA)))
    for i, want in enumerate(DATA[f"{case}/x"]):
        assert_close_rel(xs[i], want, name=f"{case} step {i}")


def test_multistep_solvers_end_nearer_the_exact_ode_solution_than_ddim():
    """Gaussian data: z = (x_t - sqrt(abar) mu) / sqrt(abar s^2 + 1 - abar) is constant along the exact path,
    so the end point is mu + s z(x_T). At 10 steps every multistep solver lands nearer it than DDIM, and
    order 3 nearer than order 2 nearer than order 1."""
    abar = np.asarray(DATA["alphas_cumprod"], np.float32)
    mu = np.asarray(DATA["gauss_mu"], np.float64)[:, None, None]
    s = np.asarray(DATA["gauss_s"], np.float64)[:, None, None]
    x_T = np.asarray(DATA["x_T"], np.float64)
    eps_fn = noise_predictor("gauss", META, DATA)

    def error(name, order, steps=10):
        plan = solvers.make_plan(name, order, None, abar, steps, eta=0.0)
        a = float(abar[int(plan.timesteps[0])])
        z = (x_T - np.sqrt(a) * mu) / np.sqrt(a * s**2 + 1 - a)
        end = float(abar[0]) if name == "ddim" else 1.0  # DDIM stops at t = 0, the others at sigma 0
        exact = np.sqrt(end) * mu + np.sqrt(end * s**2 + 1 - end) * z
        end = np.asarray(run(plan, jnp.asarray(x_T, jnp.float32), eps_fn)[-1], np.float64)
        return np.abs(end - exact).max()

    ddim = error("ddim", 1)
    dpm = [error("dpmpp", k) for k in (1, 2, 3)]
    assert dpm[2] < dpm[1] < dpm[0] and dpm[1] < ddim, (ddim, dpm)
    assert error("unipc", 2) < dpm[0] and error("unipc", 2) < ddim


def test_spacings_and_orders_are_diffusers():
    np.testing.assert_array_equal(multistep_timesteps(1000, 4, "linspace"), [999, 749, 500, 250])
    np.testing.assert_array_equal(multistep_timesteps(1000, 4, "leading"), [801, 601, 401, 201])
    assert [step_order(3, i, 6) for i in range(6)] == [1, 2, 3, 3, 2, 1]  # warm-up, then lower order final
    assert [step_order(3, i, 16) for i in range(16)][-3:] == [3, 3, 1]  # 15 steps or more: only the last


@pytest.mark.parametrize(
    "name, order, spacing, steps, message",
    [
        ("euler", None, None, 10, "unknown sampler 'euler'; expected one of: ddim, dpmpp, unipc"),
        ("ddim", 2, None, 10, "sampler 'ddim' has order(s) 1, not 2"),
        ("unipc", 4, None, 10, "sampler 'unipc' has order(s) 1, 2, 3, not 4"),
        ("dpmpp", None, "trailing", 10, "unknown timestep spacing 'trailing'; expected one of: leading, linspace"),
        ("dpmpp", None, None, 1000, "steps must be in 1..999 for a 1000-step schedule, got 1000"),
    ],
)
def test_bad_settings_are_one_line_errors(name, order, spacing, steps, message):
    with pytest.raises(ValueError) as err:
        solvers.make_plan(name, order, spacing, np.asarray(DATA["alphas_cumprod"], np.float32), steps, eta=0.0)
    assert str(err.value) == message

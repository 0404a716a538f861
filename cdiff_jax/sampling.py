"""Sampling as one XLA program: encode conditions, scan every solver step, decode.

`sample` is a single `jax.jit` over `(graphdef, state)` whose loop is one `lax.scan` with the
solver's state (x_t, and a multistep solver's history) in the carry. Uni-modal sampling is the
same program with one modality. Trajectories (x_t, pred_x0, eps, influence maps per step) are
stacked only when `record=True`, which is a separate compilation, so the default program
neither stores nor recompiles for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from cdiff_jax.diffusion import solvers
from cdiff_jax.diffusion.collaboration import EqualWeights, Reweighting
from cdiff_jax.diffusion.denoiser import Guidance, encode_conditions, predict
from cdiff_jax.diffusion.schedule import alphas_cumprod
from cdiff_jax.nn.freeu import FreeU
from cdiff_jax.noise import normal


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Static settings: changing one compiles a new program."""

    steps: int = 50
    eta: float = 1.0  # the released scripts sample with eta 1; DDIM's only (the other solvers are deterministic)
    solver: str = "ddim"  # a name of cdiff_jax.diffusion.solvers.SOLVERS
    order: int | None = None  # None: the solver's default
    spacing: str | None = None  # "leading" or "linspace"; None: the solver's default
    reweighting: Reweighting | EqualWeights | None = Reweighting()  # None: the plain softmax of training
    guided: tuple[str, ...] = ()  # modalities with classifier-free guidance
    freeu: FreeU | None = None  # FreeU on the experts (the official FreeU scripts'); None: off
    record: bool = False

    def __post_init__(self):
        solvers.resolve(self.solver, self.order, self.spacing)

    def plan(self, alphas_cumprod: np.ndarray):
        """The solver's per-step constants on the schedule `alphas_cumprod`."""
        return solvers.make_plan(self.solver, self.order, self.spacing, alphas_cumprod, self.steps, self.eta)


@struct.dataclass
class Trajectory:
    """Per-step arrays in sampling order, each with a leading step axis."""

    timesteps: jax.Array
    x_t: jax.Array  # the input of each step
    pred_x0: jax.Array
    eps: jax.Array
    expert_eps: jax.Array  # [S, M, ...]
    logits: jax.Array | None  # [S, M, B, H, W, 1]
    weights: jax.Array  # [S, M, B, H, W, 1]


@struct.dataclass
class SampleResult:
    latents: jax.Array  # z_0, [B, h, w, c]
    images: jax.Array  # decoded, [B, H, W, 3] in about [-1, 1], not clipped
    trajectory: Trajectory | None


class NonFiniteSamples(RuntimeError):
    """Sampling produced NaN or infinite latents: broken weights or an unstable setting, never a picture."""


def require_finite(samples: jax.Array) -> np.ndarray:
    """`samples` [B, ...] (latents or images) on the host, or NonFiniteSamples naming how many broke
    (they would be saved as black PNGs)."""
    samples = np.asarray(samples)
    finite = np.isfinite(samples).reshape(samples.shape[0], -1).all(axis=1)
    if not finite.all():
        raise NonFiniteSamples(
            f"{int((~finite).sum())} of {finite.size} samples are not finite (NaN or inf); "
            "check the checkpoint's weights, or lower --guidance and --mask-scale"
        )
    return samples


def sample(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    conditions: dict[str, jax.Array],
    x_T: jax.Array,
    key: jax.Array,
    settings: SamplerSettings = SamplerSettings(),
    *,
    step_noise: jax.Array | None = None,
    guidance_scales: dict[str, jax.Array] | None = None,
    null_conditions: dict[str, jax.Array] | None = None,
    on_step: StepReporter | None = None,
) -> SampleResult:
    """Sample latents and images for `conditions` (token ids / one-hot masks per modality).

    DDIM's noise of each step comes from `key`, or from `step_noise` [S, *x_T.shape] when given
    (to replay a reference run); the multistep solvers draw none. Guidance scales and null
    conditions are needed for the modalities named in `settings.guided`. `on_step(done, total)` is called after every
    compiled step (e.g. a `cdiff_jax.progress.SamplingBar`); the call then waits for the result.
    """
    guided = set(settings.guided)
    if guided - set(conditions):
        raise ValueError(f"guided modalities {sorted(guided)} are not all among the conditions {sorted(conditions)}")
    if guided and (not guidance_scales or not null_conditions or guided - set(null_conditions)):
        raise ValueError("classifier-free guidance needs a scale and a null condition for every guided modality")
    return _run(
        on_step,
        graphdef,
        state,
        conditions,
        {},
        x_T,
        key,
        step_noise,
        guidance_scales or {},
        null_conditions or {},
        settings,
    )


def sample_from_contexts(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    contexts: dict[str, jax.Array],
    x_T: jax.Array,
    key: jax.Array,
    settings: SamplerSettings = SamplerSettings(),
    *,
    step_noise: jax.Array | None = None,
    on_step: StepReporter | None = None,
) -> SampleResult:
    """`sample` from cross-attention contexts given directly (edited or interpolated embeddings),
    which the experts and the diffusers see instead of encoded conditions. No guidance."""
    if settings.guided:
        raise ValueError("classifier-free guidance needs conditions to encode null ones from; use `sample`")
    return _run(on_step, graphdef, state, {}, contexts, x_T, key, step_noise, {}, {}, settings)


# --- progress from inside the compiled loop -----------------------------------------------------
# Each step reports through `jax.debug.callback` (a device-to-host sync per step, negligible next to
# a denoising step; bench/progress_overhead.py). The program cannot hold a Python callable without
# compiling one program per callable, so it carries the number of the call's reporter as data: one
# compiled program serves every reporter, and a call reaches only its own.

StepReporter = Callable[[int, int], None]  # (steps done, steps in all)
_reporters: dict[int, StepReporter] = {}
_reporter_numbers = itertools.count()
_reporters_lock = threading.Lock()


@contextlib.contextmanager
def _registered(reporter: StepReporter):
    with _reporters_lock:
        number = next(_reporter_numbers)
        _reporters[number] = reporter
    try:
        yield jnp.asarray(number, jnp.int32)
    finally:
        with _reporters_lock:
            del _reporters[number]


def _report_step(reporter, i, total) -> None:
    _reporters[int(reporter)](int(i) + 1, int(total))


def _run(on_step, *args) -> SampleResult:
    if on_step is None:
        return _sample_program(None, *args)
    with _registered(on_step) as reporter:
        result = jax.block_until_ready(_sample_program(reporter, *args))
        jax.effects_barrier()  # every step has reported before the reporter is dropped
    return result


@jax.jit(static_argnames=("graphdef", "settings"))
def _sample_program(
    reporter, graphdef, state, conditions, contexts, x_T, key, step_noise, guidance_scales, null_conditions, settings
):
    system = nnx.merge(graphdef, state)
    contexts = contexts or encode_conditions(system, conditions)
    guidance = _guidance(system, contexts, guidance_scales, null_conditions, settings.guided)
    plan = settings.plan(alphas_cumprod(system.cfg.schedule))
    solver_state, trajectory = solver_steps(
        system,
        contexts,
        guidance,
        plan,
        settings,
        solvers.initial(plan, x_T),
        key,
        0,
        plan.timesteps.shape[0],
        step_noise,
        reporter,
    )
    z0 = solvers.current_sample(solver_state)
    return SampleResult(latents=z0, images=system.autoencoder.decode_latent(z0), trajectory=trajectory)


def solver_steps(
    system,
    contexts,
    guidance,
    plan,
    settings: SamplerSettings,
    solver_state,
    key,
    start: int,
    stop: int,
    step_noise=None,
    reporter=None,
):
    """The sampler's steps start+1 .. stop (1-based) of `plan` from `solver_state`, one `lax.scan`: (the state
    after them, their Trajectory if `settings.record`). Step i's noise is drawn from split(key, all steps)[i] (or
    is step_noise[i]) whichever steps run, so a run split into parts is the whole run. No steps: the state as
    given and no loop in the program."""
    if start == stop:
        return solver_state, None
    num_steps = plan.timesteps.shape[0]  # DDIM's can exceed settings.steps, see ddim_timesteps
    stochastic = solvers.SOLVERS[settings.solver].stochastic
    noise_source = None
    if stochastic:
        noise_source = (jax.random.split(key, num_steps) if step_noise is None else step_noise)[start:stop]
    batch = solvers.current_sample(solver_state).shape[0]

    def step(solver_state, inputs):
        i, row, noise = inputs
        x = solvers.current_sample(solver_state)
        if stochastic and step_noise is None:
            noise = normal(noise, x.shape, x.dtype)
        p = predict(
            system, x, jnp.full((batch,), row.timesteps), contexts, settings.reweighting, guidance, settings.freeu
        )
        solver_state, pred_x0 = solvers.step(solver_state, p.eps, row, noise)
        if reporter is not None:
            jax.debug.callback(_report_step, reporter, i, num_steps)
        record = None
        if settings.record:
            record = Trajectory(row.timesteps, x, pred_x0, p.eps, p.expert_eps, p.logits, p.weights)
        return solver_state, record

    xs = (jnp.arange(start, stop), jax.tree.map(lambda column: column[start:stop], plan), noise_source)
    return jax.lax.scan(step, solver_state, xs)


def _guidance(system, contexts, scales, null_conditions, guided) -> Guidance | None:
    if not guided:
        return None
    null_contexts = encode_conditions(system, {n: null_conditions[n] for n in guided})
    batch = next(iter(contexts.values())).shape[0]
    full_scales, full_null = {}, {}
    for name, context in contexts.items():
        if name in guided:
            null = null_contexts[name]
            full_null[name] = jnp.broadcast_to(null, (batch,) + null.shape[1:])
            full_scales[name] = jnp.asarray(scales[name], jnp.float32)
        else:  # scale 1 with the real condition as "null" is exactly the unguided prediction
            full_null[name] = context
            full_scales[name] = jnp.float32(1.0)
    return Guidance(scales=full_scales, null_contexts=full_null)

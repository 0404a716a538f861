"""Sampling as one XLA program: encode conditions, scan every DDIM step, decode.

`sample` is a single `jax.jit` over `(graphdef, state)` whose loop is one `lax.scan` with x_t
in the carry. Uni-modal sampling is the same program with one modality. Trajectories
(x_t, pred_x0, eps, influence maps per step) are stacked only when `record=True`, which is a
separate compilation, so the default program neither stores nor recompiles for them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from cdiff_jax.diffusion.collaboration import EqualWeights, Reweighting
from cdiff_jax.diffusion.ddim import ddim_coefficients, ddim_step
from cdiff_jax.diffusion.denoiser import Guidance, encode_conditions, predict
from cdiff_jax.diffusion.schedule import alphas_cumprod


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Static settings: changing one compiles a new program."""

    steps: int = 50
    eta: float = 1.0  # the released scripts sample with eta 1
    reweighting: Reweighting | EqualWeights | None = Reweighting()  # None: the plain softmax of training
    guided: tuple[str, ...] = ()  # modalities with classifier-free guidance
    record: bool = False
    progress: bool = False


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
) -> SampleResult:
    """Sample latents and images for `conditions` (token ids / one-hot masks per modality).

    Noise of each step comes from `key`, or from `step_noise` [S, *x_T.shape] when given
    (to replay a reference run). Guidance scales and null conditions are needed for the
    modalities named in `settings.guided`.
    """
    guided = set(settings.guided)
    if guided - set(conditions):
        raise ValueError(f"guided modalities {sorted(guided)} are not all among the conditions {sorted(conditions)}")
    if guided and (not guidance_scales or not null_conditions or guided - set(null_conditions)):
        raise ValueError("classifier-free guidance needs a scale and a null condition for every guided modality")
    return _sample_program(
        graphdef, state, conditions, {}, x_T, key, step_noise, guidance_scales or {}, null_conditions or {}, settings
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
) -> SampleResult:
    """`sample` from cross-attention contexts given directly (edited or interpolated embeddings),
    which the experts and the diffusers see instead of encoded conditions. No guidance."""
    if settings.guided:
        raise ValueError("classifier-free guidance needs conditions to encode null ones from; use `sample`")
    return _sample_program(graphdef, state, {}, contexts, x_T, key, step_noise, {}, {}, settings)


@jax.jit(static_argnames=("graphdef", "settings"))
def _sample_program(graphdef, state, conditions, contexts, x_T, key, step_noise, guidance_scales, null_conditions,
                    settings):
    system = nnx.merge(graphdef, state)
    contexts = contexts or encode_conditions(system, conditions)
    guidance = _guidance(system, contexts, guidance_scales, null_conditions, settings.guided)
    coeffs = ddim_coefficients(alphas_cumprod(system.cfg.schedule), settings.steps, settings.eta)
    num_steps = coeffs.timesteps.shape[0]  # can exceed settings.steps, see ddim_timesteps
    noise_source = jax.random.split(key, num_steps) if step_noise is None else step_noise
    batch = x_T.shape[0]

    def step(x, inputs):
        i, t, a_t, a_prev, sigma, s1m, noise = inputs
        if step_noise is None:
            noise = jax.random.normal(noise, x.shape, x.dtype)
        p = predict(system, x, jnp.full((batch,), t), contexts, settings.reweighting, guidance)
        x_prev, pred_x0 = ddim_step(x, p.eps, a_t, a_prev, sigma, s1m, noise)
        if settings.progress:
            jax.debug.callback(_report_step, i, num_steps)
        record = None
        if settings.record:
            record = Trajectory(t, x, pred_x0, p.eps, p.expert_eps, p.logits, p.weights)
        return x_prev, record

    xs = (jnp.arange(num_steps), coeffs.timesteps, coeffs.a_t, coeffs.a_prev, coeffs.sigma,
          coeffs.sqrt_one_minus_a_t, noise_source)
    z0, trajectory = jax.lax.scan(step, x_T, xs)
    return SampleResult(latents=z0, images=system.autoencoder.decode_latent(z0), trajectory=trajectory)


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


# --- progress from inside the compiled loop -----------------------------------------------------
# The loop reports each finished step through a host callback (a device-to-host sync per step,
# negligible next to a denoising step); whoever samples installs a listener for the duration.

_listeners: list[Callable[[int, int], None]] = []


def _report_step(i, total) -> None:
    for listener in _listeners:
        listener(int(i) + 1, int(total))


class progress_listener:
    """Context manager: `listener(done, total)` is called after every compiled DDIM step."""

    def __init__(self, listener: Callable[[int, int], None]):
        self.listener = listener

    def __enter__(self):
        _listeners.append(self.listener)
        return self

    def __exit__(self, *exc):
        _listeners.remove(self.listener)


def print_progress(prefix: str = "sampling") -> Callable[[int, int], None]:
    """A listener printing steps/s and ETA on one updating line (rate timed from the first step,
    so compilation does not count)."""
    first: list[float] = []

    def listener(done: int, total: int) -> None:
        now = time.perf_counter()
        if not first:
            first.append(now)
        rate = (done - 1) / (now - first[0]) if done > 1 else 0.0
        eta = f"{(total - done) / rate:.0f}s" if rate else "?"
        end = "\n" if done == total else ""
        print(f"\r{prefix}: step {done}/{total}  {rate:.2f} steps/s  ETA {eta}", end=end, flush=True)

    return listener

"""The diffusion stages' training step: the eps loss's gradient, AdamW and LDM's EMA, run by the
package's optimisation loop (`cdiff_jax.optimization`), several steps per device call.

Which parameters train is decided by the stage (a path filter); the step itself only sees a
`trainable` state that gets gradients and a `frozen` state that does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from cdiff_jax.config import SystemConfig
from cdiff_jax.diffusion.schedule import Schedule
from cdiff_jax.optimization import LoopPolicy, loop_policy, run_steps
from cdiff_jax.train.objectives import diffusion_loss, loss_draws

STAGES = ("collab", "expert", "autoencoder")


def trainable_prefixes(stage: str, cfg: SystemConfig, modality: str | None = None) -> tuple[tuple[str, ...], ...]:
    """Parameter path prefixes a stage trains: the diffusers, one expert with its encoder, or the autoencoder."""
    if stage == "collab":
        if not cfg.is_collaborative or len(cfg.modalities) < 2:
            raise ValueError("the collab stage needs a system with two or more modalities and their diffusers")
        return tuple(("modalities", name, "diffuser") for name in cfg.modalities)
    if stage == "expert":
        if modality not in cfg.modalities:
            raise ValueError(f"the expert stage needs one of the system's modalities {sorted(cfg.modalities)}")
        return (("modalities", modality, "expert"), ("modalities", modality, "encoder"))
    if stage == "autoencoder":
        return (("autoencoder",),)
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def trainable_filter(prefixes: tuple[tuple[str, ...], ...]) -> Callable:
    def is_trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and any(tuple(path[: len(p)]) == p for p in prefixes)

    return is_trainable


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State  # the trainable parameters
    opt_state: optax.OptState
    ema: nnx.State | None = None  # exponential moving average of `params`, when kept

    @property
    def export_params(self) -> nnx.State:
        """What validation, samples and the exported system use: the average when one is kept (as LDM)."""
        return self.params if self.ema is None else self.ema


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static settings of the compiled step."""

    condition_dropout: float = 0.0
    ema_decay: float = 0.0  # > 0: keep LDM's LitEma average of the trained parameters
    accumulation: int = 1  # micro-batches per optimizer step (the batch is split; one gradient, as the whole's)


@struct.dataclass
class StepMetrics:
    loss: jax.Array  # [k]
    grad_norm: jax.Array  # [k]
    finite: jax.Array  # [k] bool: the update was applied


def init_train_state(params: nnx.State, tx: optax.GradientTransformation, ema: bool = False) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema=jax.tree.map(jnp.copy, params) if ema else None,
    )


def apply_gradients(state: TrainState, loss: jax.Array, grads: nnx.State, tx: optax.GradientTransformation):
    """One optimizer update of `state` by `grads`, for a step of `run_steps`: (the new state, the metrics
    (loss, gradient norm), the values the non-finite guard watches (the same two))."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = TrainState(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state, ema=state.ema
    )
    return new, (loss, grad_norm), (loss, grad_norm)


def ema_update(ema: nnx.State, params: nnx.State, decay: float, updates: jax.Array) -> nnx.State:
    """LDM's LitEma after its `updates`-th update: ema -= (1 - d) (ema - params) with
    d = min(decay, (1 + updates) / (10 + updates)), so early averages follow the parameters closely."""
    updates = updates.astype(jnp.float32)
    one_minus = 1.0 - jnp.minimum(decay, (1.0 + updates) / (10.0 + updates))
    return jax.tree.map(lambda e, p: e - one_minus * (e - p), ema, params)


def train_steps(
    graphdef: nnx.GraphDef,
    frozen: nnx.State,
    state: TrainState,
    batches: dict[str, jax.Array],
    schedule: Schedule,
    key: jax.Array,
    tx: optax.GradientTransformation,
    settings: StepSettings = StepSettings(),
) -> tuple[TrainState, StepMetrics]:
    """Run one optimizer step per leading entry of `batches` ([k, B, ...] arrays).

    The randomness of step n is fold_in(key, n), so a run resumed at step n draws exactly
    what an uninterrupted run would have. A step with a non-finite loss or gradient, and every
    step after it in the call, leaves the state unchanged and reports `finite` False.
    """
    return _train_steps(graphdef, frozen, state, batches, schedule, key, tx, settings, loop_policy())


@jax.jit(static_argnames=("graphdef", "tx", "settings", "policy"), donate_argnames=("state",))
def _train_steps(graphdef, frozen, state, batches, schedule, key, tx, settings, policy: LoopPolicy):
    def loss_fn(params, batch, draws):
        return diffusion_loss(nnx.merge(graphdef, params, frozen), schedule, batch, draws)

    def loss_and_grads(params, batch, step_key):
        """The whole batch's mean loss and gradient; with accumulation, as the mean over equal micro-batches,
        each seeing its slice of the whole batch's random draws."""
        draws = loss_draws(
            nnx.merge(graphdef, params, frozen), schedule, batch["image"], step_key, settings.condition_dropout
        )
        if settings.accumulation == 1:
            return jax.value_and_grad(loss_fn)(params, batch, draws)
        micro = jax.tree.map(lambda x: x.reshape(settings.accumulation, -1, *x.shape[1:]), (batch, draws))

        def add(total, part):
            return jax.tree.map(jnp.add, total, jax.value_and_grad(loss_fn)(params, *part)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(add, zeros, micro)
        return jax.tree.map(lambda x: x / settings.accumulation, total)

    def one_step(state: TrainState, batch):
        loss, grads = loss_and_grads(state.params, batch, jax.random.fold_in(key, state.step))
        new, metrics, watched = apply_gradients(state, loss, grads, tx)
        if new.ema is not None:
            new = new.replace(ema=ema_update(new.ema, new.params, settings.ema_decay, new.step))
        return new, metrics, watched

    state, (loss, grad_norm), applied = run_steps(one_step, state, batches, policy)
    return state, StepMetrics(loss=loss, grad_norm=grad_norm, finite=applied)

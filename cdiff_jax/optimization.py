"""The one optimisation loop of the package: Adam(W), a non-finite guard, several steps per device call.

Every trainer (diffusion stages, autoencoder, Imagic, the toy judges) gives `run_steps` a pure step
`(carry, batch) -> (carry, metrics, watched)` and calls it inside its own `jax.jit`. The loop applies
the step once per leading entry of the batches and guards it: from the first step whose `watched`
values (its loss and gradient norms) are not all finite, the carry is left unchanged, so the host can
stop with the last good state. How the steps are compiled depends on the backend (`LoopPolicy`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

POLICY_ENV = "CDIFF_LOOP_POLICY"


def adam(
    learning_rate, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float | None = None
) -> optax.GradientTransformation:
    """torch.optim.Adam, or AdamW when `weight_decay` is given, with torch's defaults.

    The decay is never defaulted: optax's adamw decays by 1e-4 unless told, torch's AdamW by 1e-2.
    `learning_rate` may be an optax schedule.
    """
    b1, b2 = betas
    if weight_decay is None:
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


@dataclasses.dataclass(frozen=True)
class LoopPolicy:
    """How a call of several optimizer steps is compiled on one backend."""

    unroll: bool  # each step of a call is its own copy in the program (no while loop), or one rolled lax.scan
    edit_steps_per_call: int  # Imagic iterations per call (`ImagicSettings.chunk` overrides)
    judge_steps_per_call: int  # the toy judges' steps per call (`fit(steps_per_call=)` overrides)


# XLA:CPU runs convolution gradients nested in a while loop or a conditional far off its fast path
# (BENCHMARKS.md, "Gradients inside loops on XLA:CPU"), so there every step is copied into the program,
# a lone step included (a length-1 rolled scan is still a loop). For the same reason the autoencoder
# stage switches its discriminator on by choosing one of two programs on the host, not with `lax.cond`,
# on every backend (train/autoencoder_step.py). Copies cost compile time, which a large expert's
# few-percent gain per iteration does not repay, so edits run one iteration per call (BENCHMARKS.md,
# "Imagic iterations"); the judges' small CNNs gain from ten.
CPU = LoopPolicy(unroll=True, edit_steps_per_call=1, judge_steps_per_call=10)
# Accelerators are not known to share the problem: one rolled loop, whose compile time does not grow
# with the steps per call (not measured here).
ACCELERATOR = LoopPolicy(unroll=False, edit_steps_per_call=10, judge_steps_per_call=10)
POLICIES = {"cpu": CPU, "accelerator": ACCELERATOR}


def loop_policy() -> LoopPolicy:
    """The policy for `jax.default_backend()`, or the one named by CDIFF_LOOP_POLICY (cpu or accelerator)."""
    name = os.environ.get(POLICY_ENV)
    if name:
        if name not in POLICIES:
            raise ValueError(
                f"{POLICY_ENV}={name!r} is not a loop policy; set it to one of {sorted(POLICIES)} or unset it"
            )
        return POLICIES[name]
    return CPU if jax.default_backend() == "cpu" else ACCELERATOR


def all_finite(tree) -> jax.Array:
    """bool scalar: every element of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def run_steps(step: Callable, carry, batches, policy: LoopPolicy, healthy=True):
    """Apply `step` once per leading entry of `batches`; returns (carry, metrics [k, ...], applied [k] bool).

    `applied[i]` is False from the first step whose `watched` values are not all finite on: those steps
    leave the carry as it was, so `carry` is the state after the last good step. A caller that runs two
    loops in one program passes the first one's last `applied` as `healthy`, so the guard spans both.
    """

    def guarded(state, batch):
        carry, healthy = state
        new, metrics, watched = step(carry, batch)
        applied = healthy & all_finite(watched)
        carry = jax.tree.map(lambda n, o: jnp.where(applied, n, o), new, carry)
        return (carry, applied), (metrics, applied)

    # unroll=0 copies every step, a single one included; 1 (or True) on a length-1 scan still lowers to a
    # one-trip while loop, the slow path on CPU.
    (carry, _), (metrics, applied) = jax.lax.scan(
        guarded, (carry, jnp.asarray(healthy, jnp.bool_)), batches, unroll=0 if policy.unroll else 1
    )
    return carry, metrics, applied


def first_rejected(applied) -> int | None:
    """Host side: the index of the first step the guard rejected in a call, or None when all were applied."""
    rejected = np.flatnonzero(~np.asarray(applied))
    return int(rejected[0]) if rejected.size else None


class NonFiniteStep(FloatingPointError):
    """A step's loss or gradient was not finite. `state` is the last good state, `step` the rejected step
    (counted from 1)."""

    def __init__(self, message: str, step: int, state):
        super().__init__(message)
        self.step = step
        self.state = state

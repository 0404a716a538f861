"""Activation checkpointing by name: what each network block keeps for the backward pass.

A training step sets a policy on the modules it differentiates (`set_policy`); the UNet, the text encoder and
the autoencoder then run each of their blocks through `jax.checkpoint`, so the backward pass recomputes what the
policy does not keep: activation memory traded for about one more forward pass. The policy is a static
attribute (it lives in the graphdef), so no parameter, checkpoint or forward result depends on it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

POLICIES = {
    "none": None,  # no checkpointing: every activation is kept
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each block's inputs
    # keep the matmul results (projections, MLPs, and the convolutions where the kernel forms compute them as
    # matmuls); recompute norms, activations and attention scores
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_policy(name: str) -> None:
    if name not in POLICIES:
        raise ValueError(
            f"remat={name!r}: unknown activation checkpointing policy; choose one of {', '.join(POLICIES)}"
        )


def checkpointed(fn: Callable, policy: str) -> Callable:
    """`fn` (its first argument a module, the others arrays) recomputed in the backward pass under `policy`;
    `fn` itself for "none". The module enters `jax.checkpoint` as (graphdef, state), a pure function: nothing
    is written back to it, so frozen parts whose parameters come from an outer trace checkpoint as well."""
    check_policy(policy)
    if policy == "none":
        return fn

    def run(module: nnx.Module, *args):
        graphdef, state = nnx.split(module)
        return jax.checkpoint(lambda state, *args: fn(nnx.merge(graphdef, state), *args), policy=POLICIES[policy])(
            state, *args
        )

    return run


def set_policy(module: nnx.Module, policy: str) -> None:
    """Set `policy` on every submodule of `module` that checkpoints its blocks."""
    check_policy(policy)
    module.set_attributes(remat=policy, raise_if_not_found=False)

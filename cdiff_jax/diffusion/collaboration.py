"""How modalities share the noise prediction: per-pixel weights from influence logits.

Training (and the plain mode) uses a softmax across modalities. The released samplers add a
hand-set prior on top, `Reweighting`: the weight of the spatial modalities (the mask, and any
kind the table `cdiff_jax.modalities` marks spatial) is decayed with the timestep, the other
modalities take what is left, then the spatial weight is multiplied by `scale` and all are
renormalised. It is an explicit argument here; the reference set it by mutating the model
inside its sampler. `EqualWeights` is the fixed baseline without influence maps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cdiff_jax.modalities import spatial_names

DECAY_SCHEDULES = ("cosine", "linear", "none")


@dataclasses.dataclass(frozen=True)
class Reweighting:
    """The released inference prior: cosine decay of the spatial modalities' weight, then a 2x boost.

    `decayed` names modalities; the default is the released model's mask, and `rule_for_mode` derives
    it from the modalities' kinds.
    """

    decayed: tuple[str, ...] = ("mask",)
    schedule: str = "cosine"
    scale: float = 2.0
    num_timesteps: int = 1000

    def __post_init__(self):
        if self.schedule not in DECAY_SCHEDULES:
            raise ValueError(f"reweighting schedule {self.schedule!r}: expected one of {DECAY_SCHEDULES}")


@dataclasses.dataclass(frozen=True)
class EqualWeights:
    """Composable Diffusion's rule, the baseline the paper compares with: every modality weighs 1/M
    at every pixel and step, so the dynamic diffusers are not consulted."""


MODES = ("released", "plain", "linear", "equal")


def rule_for_mode(
    mode: str, modalities: Mapping[str, str] | Sequence[str], mask_scale: float = 2.0, num_timesteps: int = 1000
) -> Reweighting | EqualWeights | None:
    """The combination rule a sampler's `--mode` names: released (cosine decay of the spatial modalities'
    weight, then x mask_scale), linear (linear decay, then x mask_scale), plain (the softmax of training)
    or equal. `modalities` maps the sampled modalities' names to their kinds (plain names: see
    `cdiff_jax.modalities.spatial_names`); without a spatial one, or with only spatial ones, the
    released and linear modes are the plain softmax."""
    if mode not in MODES:
        raise ValueError(f"collaboration mode {mode!r}: expected one of {MODES}")
    if mode == "equal":
        return EqualWeights()
    spatial = spatial_names(modalities)
    if mode == "plain" or not spatial or len(spatial) == len(modalities):
        return None
    return Reweighting(
        decayed=spatial,
        schedule="cosine" if mode == "released" else "linear",
        scale=mask_scale,
        num_timesteps=num_timesteps,
    )


def decay(t: jax.Array, schedule: str, num_timesteps: int = 1000) -> jax.Array:
    """k(t) in float32: cosine (cos((1 - t/T) pi) + 1) / 2, linear t/T, or 1."""
    frac = t.astype(jnp.float32) / num_timesteps
    if schedule == "cosine":
        return (jnp.cos((1 - frac) * np.float32(math.pi)) + 1) / 2
    if schedule == "linear":
        return frac
    return jnp.ones_like(frac)


def influence_weights(
    logits: jax.Array, t: jax.Array, names: tuple[str, ...], reweighting: Reweighting | None = None
) -> jax.Array:
    """Logits [M, B, H, W, 1] -> weights of the same shape that sum to 1 over modalities.

    With `reweighting`, the decayed modalities d get w_d = s_d * k(t); the rest share 1 - sum w_d
    in proportion to their softmax weights (for two modalities: the reference's 1 - w_mask);
    then the decayed weights are scaled and all are renormalised. t is per example; the
    reference used t[0] for the batch, which is the same in its samplers where t is shared.
    """
    weights = jax.nn.softmax(logits, axis=0)
    if reweighting is None:
        return weights
    unknown = set(reweighting.decayed) - set(names)
    if unknown or len(reweighting.decayed) >= len(names):
        raise ValueError(f"reweighting decays {reweighting.decayed}, which must be a strict subset of {names}")
    is_decayed = jnp.asarray([n in reweighting.decayed for n in names]).reshape(-1, 1, 1, 1, 1)
    k = decay(t, reweighting.schedule, reweighting.num_timesteps).reshape(1, -1, 1, 1, 1)
    decayed = jnp.where(is_decayed, weights * k, 0.0)
    kept = jnp.where(is_decayed, 0.0, weights)
    kept_total = kept.sum(axis=0, keepdims=True)
    share = jnp.where(kept_total > 0, kept / jnp.where(kept_total > 0, kept_total, 1.0), 1.0 / (~is_decayed).sum())
    weights = jnp.where(is_decayed, decayed, share * (1 - decayed.sum(axis=0, keepdims=True)))
    weights = jnp.where(is_decayed, weights * reweighting.scale, weights)
    return weights / weights.sum(axis=0, keepdims=True)


def combine(eps: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_m w_m * eps_m: eps [M, B, H, W, C], weights [M, B, H, W, 1] broadcast over channels."""
    return (eps * weights).sum(axis=0)

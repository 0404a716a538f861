"""The system's noise prediction at (x_t, t): one expert alone, or experts in collaboration; and
the experts' internal features there (`expert_features`, what DDGI reads).

Functions here take a merged `LatentDiffusionSystem` and are meant to run inside `jax.jit`
(callers merge `(graphdef, state)` in the jitted function). Modality order is the order of
`contexts`, which is the order of the softmax over influence maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from cdiff_jax.diffusion.collaboration import EqualWeights, Reweighting, combine, influence_weights
from cdiff_jax.nn.freeu import FreeU
from cdiff_jax.nn.unet import UNetFeatures
from cdiff_jax.system import LatentDiffusionSystem


@struct.dataclass
class Prediction:
    eps: jax.Array  # [B, H, W, C], the combined prediction
    expert_eps: jax.Array  # [M, B, H, W, C]
    logits: jax.Array | None  # [M, B, H, W, 1] raw influence maps (None for one expert)
    weights: jax.Array  # [M, B, H, W, 1] influence maps after the softmax (and re-weighting)


def encode_conditions(system: LatentDiffusionSystem, conditions: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Token ids / one-hot masks per modality -> cross-attention contexts."""
    return {name: system.modalities[name].encoder(cond) for name, cond in conditions.items()}


def predict(
    system: LatentDiffusionSystem,
    x: jax.Array,
    t: jax.Array,
    contexts: dict[str, jax.Array],
    reweighting: Reweighting | EqualWeights | None = None,
    guidance: Guidance | None = None,
    freeu: FreeU | None = None,
) -> Prediction:
    """eps of every expert named in `contexts`, combined by their dynamic diffusers' maps
    (or with equal weights, without running the diffusers).

    With `guidance`, each expert is classifier-free guided with its own scale:
    eps_m = eps_m(null) + g_m (eps_m(cond) - eps_m(null)), the conditional and null passes
    batched together. The diffusers always see the real conditions. `freeu` applies FreeU to the
    experts (never to the diffusers).
    """
    names = tuple(contexts)
    expert_eps = jnp.stack([_expert_eps(system, n, x, t, contexts[n], guidance, freeu) for n in names])
    if len(names) == 1:
        return Prediction(
            eps=expert_eps[0], expert_eps=expert_eps, logits=None, weights=jnp.ones_like(expert_eps[..., :1])
        )
    if isinstance(reweighting, EqualWeights):
        weights = jnp.full_like(expert_eps[..., :1], 1.0 / len(names))
        return Prediction(eps=combine(expert_eps, weights), expert_eps=expert_eps, logits=None, weights=weights)
    logits = jnp.stack([_diffuser(system, n)(x, t, contexts[n]) for n in names])
    weights = influence_weights(logits, t, names, reweighting)
    return Prediction(eps=combine(expert_eps, weights), expert_eps=expert_eps, logits=logits, weights=weights)


def expert_features(
    system: LatentDiffusionSystem,
    x: jax.Array,
    t: jax.Array,
    contexts: dict[str, jax.Array],
    names: tuple[str, ...] | None = None,
    up_blocks: tuple[int, ...] | None = None,
) -> dict[str, tuple[jax.Array, UNetFeatures]]:
    """(eps, features) of the experts `names` (default: every modality in `contexts`) at (x_t, t),
    each conditioned on its own context: what DDGI reads from the frozen system.

    `up_blocks` are indices into each expert's up path (default: those with cross-attention,
    DDGI's f_t and a_t levels). Names and blocks are static: jit over a function that calls this
    compiles the taps in, and only them.
    """
    names = tuple(contexts) if names is None else tuple(names)
    unknown = [n for n in names if n not in contexts]
    if unknown:
        raise ValueError(f"expert_features: no context for {unknown}; pass contexts for them (have {list(contexts)})")
    features = {}
    for name in names:
        expert = system.modalities[name].expert
        blocks = expert.cross_attention_up_blocks() if up_blocks is None else tuple(up_blocks)
        features[name] = expert.forward_with_features(x, t, contexts[name], blocks)
    return features


@struct.dataclass
class Guidance:
    scales: dict[str, jax.Array]  # per modality, scalar
    null_contexts: dict[str, jax.Array]  # per modality, [B, tokens, ctx]


def _expert_eps(system, name, x, t, context, guidance, freeu):
    expert = system.modalities[name].expert
    if guidance is None:
        return expert(x, t, context, freeu)
    both = expert(
        jnp.concatenate([x, x]),
        jnp.concatenate([t, t]),
        jnp.concatenate([context, guidance.null_contexts[name]]),
        freeu,
    )
    cond, null = jnp.split(both, 2)
    return null + guidance.scales[name] * (cond - null)


def _diffuser(system: LatentDiffusionSystem, name: str):
    diffuser = system.modalities[name].diffuser
    if diffuser is None:
        raise ValueError(f"modality {name!r} has no dynamic diffuser; collaboration needs one per modality")
    return diffuser

"""The one place that knows the system's PyTorch key names: our parameter paths <-> official keys.

A path is our dotted NNX parameter path (e.g. `modalities.text.expert.down_blocks.3.res.in_conv.kernel`).
Each component type has an ordered list of regex rewrites from our local names to the
reference's; the prefixes say where each component lives in each official checkpoint type.
Norms' `weight` is our `scale`; tensor layouts are `cdiff_jax.weights.layout`'s (LPIPS, trained
alongside, keeps its own key map in `cdiff_jax.nn.lpips`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from cdiff_jax.modalities import kind_entry


def checkpoint_prefixes(checkpoint_type: str, modality_kinds: dict[str, str]) -> dict[str, str]:
    """Where each of our components sits inside an official checkpoint of a type (vae, codiff or a kind).

    A uni-modal checkpoint holds the modality of its kind at the top level; the collaborative one holds
    each modality under the kind's official name (`cdiff_jax.modalities`: mask is `seg_mask`).
    """
    if checkpoint_type == "vae":
        return {"autoencoder": ""}
    prefixes = {"autoencoder": "first_stage_model."}
    if checkpoint_type != "codiff":
        kind_entry(checkpoint_type)  # an unknown type is an error, not an empty map
        for name, kind in modality_kinds.items():
            if kind == checkpoint_type:
                prefixes[f"modalities.{name}.encoder"] = "cond_stage_model."
                prefixes[f"modalities.{name}.expert"] = "model.diffusion_model."
        return prefixes
    for name, kind in modality_kinds.items():
        official = kind_entry(kind).official_name
        if official is None:
            raise ValueError(f"no official collaborative checkpoint holds a {kind} modality ({name!r})")
        prefixes[f"modalities.{name}.encoder"] = f"cond_stage_model.{official}_cond_stage_model."
        prefixes[f"modalities.{name}.expert"] = f"model.{official}_unet.diffusion_model."
        prefixes[f"modalities.{name}.diffuser"] = f"model.{official}_confidence_predictor.diffusion_model."
    return prefixes


# Official keys a converter drops on purpose: training losses, the unused text-logit head.
IGNORED_KEY_PATTERNS = (re.compile(r"(^|\.)loss\."), re.compile(r"(^|\.)to_logits\."))
# That head (x-transformers' `to_logits`, vocabulary x width) under a text encoder's prefix: the official module
# holds it but never runs it (it returns embeddings), so an export writes zeros there.
TEXT_LOGIT_HEAD = "transformer.to_logits."

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

Rule = tuple[str, str | Callable[[re.Match], str]]

_LEAVES: list[Rule] = [(r"\.kernel$", ".weight"), (r"\.scale$", ".weight"), (r"\.embedding$", ".weight")]

_RES_BLOCK: list[Rule] = [
    (r"\.in_norm\.", ".in_layers.0."),
    (r"\.in_conv\.", ".in_layers.2."),
    (r"\.emb_proj\.", ".emb_layers.1."),
    (r"\.out_norm\.", ".out_layers.0."),
    (r"\.out_conv\.", ".out_layers.3."),
    (r"\.skip\.", ".skip_connection."),
]

_UNET: list[Rule] = [
    (r"^time_linear_1\.", "time_embed.0."),
    (r"^time_linear_2\.", "time_embed.2."),
    (r"^conv_in\.", "input_blocks.0.0."),
    (r"^down_blocks\.(\d+)\.res\.", lambda m: f"input_blocks.{int(m[1]) + 1}.0."),
    (r"^down_blocks\.(\d+)\.transformer\.", lambda m: f"input_blocks.{int(m[1]) + 1}.1."),
    (r"^down_blocks\.(\d+)\.resample\.conv\.", lambda m: f"input_blocks.{int(m[1]) + 1}.0.op."),
    (r"^mid_res_1\.", "middle_block.0."),
    (r"^mid_transformer\.", "middle_block.1."),
    (r"^mid_res_2\.", "middle_block.2."),
    (r"^up_blocks\.(\d+)\.res\.", r"output_blocks.\1.0."),
    (r"^up_blocks\.(\d+)\.transformer\.", r"output_blocks.\1.1."),
    # The upsampler follows the transformer when a level has one: resolved in `_unet_upsample`.
    (r"^final_norm\.", "out.0."),
    (r"^final_conv\.", "out.2."),
    *_RES_BLOCK,
    (r"\.blocks\.(\d+)\.", r".transformer_blocks.\1."),
    (r"\.to_out\.", ".to_out.0."),
    (r"\.ff\.proj\.", ".ff.net.0.proj."),
    (r"\.ff\.out\.", ".ff.net.2."),
]

_TEXT: list[Rule] = [
    (r"^token_emb\.", "transformer.token_emb."),
    (r"^pos_emb\.", "transformer.pos_emb.emb."),
    (r"^layers\.(\d+)\.attn_norm\.", lambda m: f"transformer.attn_layers.layers.{2 * int(m[1])}.0."),
    (r"^layers\.(\d+)\.attn\.", lambda m: f"transformer.attn_layers.layers.{2 * int(m[1])}.1."),
    (r"^layers\.(\d+)\.ff_norm\.", lambda m: f"transformer.attn_layers.layers.{2 * int(m[1]) + 1}.0."),
    (r"^layers\.(\d+)\.ff\.fc1\.", lambda m: f"transformer.attn_layers.layers.{2 * int(m[1]) + 1}.1.net.0.0."),
    (r"^layers\.(\d+)\.ff\.fc2\.", lambda m: f"transformer.attn_layers.layers.{2 * int(m[1]) + 1}.1.net.2."),
    (r"^final_norm\.", "transformer.norm."),
]

_VAE: list[Rule] = [
    (r"^encoder\.down\.(\d+)\.resample\.", r"encoder.down.\1.downsample."),
    (r"^decoder\.up\.(\d+)\.resample\.", r"decoder.up.\1.upsample."),
]

_COMPONENT_RULES: dict[str, list[Rule]] = {
    "autoencoder": _VAE,
    "encoder:text": _TEXT,
    "encoder:mask": [],
    "expert": _UNET,
    "diffuser": _UNET,
}


def _rewrite(path: str, rules: Iterable[Rule]) -> str:
    for pattern, repl in rules:
        path = re.sub(pattern, repl, path)
    return path


def _unet_upsample(local: str, local_paths: set[str]) -> str | None:
    """up_blocks.i.resample.conv -> output_blocks.i.{1 or 2}.conv, after the transformer if any."""
    m = re.match(r"^up_blocks\.(\d+)\.resample\.conv\.(\w+)$", local)
    if not m:
        return None
    has_transformer = any(p.startswith(f"up_blocks.{m[1]}.transformer.") for p in local_paths)
    return f"output_blocks.{m[1]}.{2 if has_transformer else 1}.conv.{m[2]}"


def _component_of(path: str, prefixes: dict[str, str]) -> str | None:
    for component in prefixes:
        if path == component or path.startswith(component + "."):
            return component
    return None


def official_key_map(paths: Iterable[str], checkpoint_type: str, modality_kinds: dict[str, str]) -> dict[str, str]:
    """Our dotted parameter paths -> official keys for one checkpoint type.

    Paths of components that the checkpoint type does not hold (e.g. diffusers when reading a
    uni-modal checkpoint) are left out; the caller decides whether that is an error.
    """
    prefixes = checkpoint_prefixes(checkpoint_type, modality_kinds)
    paths = list(paths)
    by_component: dict[str, list[str]] = {}
    for path in paths:
        component = _component_of(path, prefixes)
        if component is not None:
            by_component.setdefault(component, []).append(path[len(component) + 1 :])
    mapping = {}
    for component, locals_ in by_component.items():
        role = component.rsplit(".", 1)[-1]
        if role == "encoder":
            role = f"encoder:{modality_kinds[component.split('.')[1]]}"
        local_set = set(locals_)
        for local in locals_:
            official = _unet_upsample(local, local_set) if role in ("expert", "diffuser") else None
            if official is None:
                official = _rewrite(local, _COMPONENT_RULES[role])
            official = _rewrite(official, _LEAVES)
            mapping[f"{component}.{local}"] = prefixes[component] + official
    return mapping


def is_ignored(key: str) -> bool:
    return any(p.search(key) for p in IGNORED_KEY_PATTERNS)

"""Translate the reference's YAML configs into our `SystemConfig`.

Widths, head counts and attention placement cannot all be read off the tensors, so a
conversion needs either one of our configs or the official YAML the checkpoint was trained
with. Collaborative YAMLs reference the two uni-modal YAMLs by relative path; like the
reference (which resolves them against its working directory) we look beside the YAML, in its
parent folders, then in the working directory.
"""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from cdiff_jax.config import (
    AutoencoderConfig,
    MaskEncoderConfig,
    ModalityConfig,
    ScheduleConfig,
    SystemConfig,
    TextEncoderConfig,
    UNetConfig,
)

_TARGETS = {
    "vae": "ldm.models.autoencoder.AutoencoderKL",
    "ldm": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "codiff": "ldm.models.diffusion.ddpm_compose.LatentDiffusionCompose",
}


class OfficialConfigError(ValueError):
    pass


def load_official_yaml(path: str | pathlib.Path) -> SystemConfig:
    """An official `model:` YAML (autoencoder, uni-modal LDM or collaborative) -> SystemConfig."""
    path = pathlib.Path(path)
    model = _read_model_section(path)
    target, params = model["target"], model.get("params", {})
    if target == _TARGETS["vae"]:
        autoencoder = _autoencoder(params, scale_factor=1.0)
        return SystemConfig(autoencoder=autoencoder, modalities={}, latent_size=_latent_size(autoencoder))
    if target == _TARGETS["ldm"]:
        return _latent_diffusion(params)
    if target == _TARGETS["codiff"]:
        mask = _latent_diffusion(
            _read_model_section(_find_referenced(path, params["seg_mask_ldm_config_path"]))["params"]
        )
        text = _latent_diffusion(_read_model_section(_find_referenced(path, params["text_ldm_config_path"]))["params"])
        predictor = params["compose_unet_config"]["params"]["confidence_map_predictor_config"]["params"]
        diffuser = _unet(predictor)
        if params["compose_unet_config"]["params"].get("confidence_input", "x_t") != "x_t":
            raise OfficialConfigError(f"{path}: only confidence_input 'x_t' (the released setting) is supported")
        modalities = {
            "mask": _with_diffuser(mask.modalities["mask"], diffuser),
            "text": _with_diffuser(text.modalities["text"], diffuser),
        }
        # The reference takes the first stage from the text LDM and discards the mask LDM's.
        return SystemConfig(
            autoencoder=text.autoencoder,
            modalities=modalities,
            schedule=_schedule(params),
            latent_size=params.get("image_size", text.latent_size),
        )
    raise OfficialConfigError(
        f"{path}: unsupported model target {target!r}; expected one of {sorted(_TARGETS.values())}"
    )


def _read_model_section(path: pathlib.Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise OfficialConfigError(f"cannot read official config {path}: {err}") from None
    if not isinstance(raw, dict) or "model" not in raw or "target" not in raw["model"]:
        raise OfficialConfigError(f"{path} is not an official model config (no model.target)")
    return raw["model"]


def _find_referenced(yaml_path: pathlib.Path, relative: str) -> pathlib.Path:
    candidates = [folder / relative for folder in [yaml_path.parent, *yaml_path.parent.parents]]
    candidates.append(pathlib.Path.cwd() / relative)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise OfficialConfigError(
        f"{yaml_path} references {relative!r}, which is not beside it, in a parent folder or in the working directory"
    )


def _with_diffuser(modality: ModalityConfig, diffuser: UNetConfig) -> ModalityConfig:
    return ModalityConfig(kind=modality.kind, encoder=modality.encoder, expert=modality.expert, diffuser=diffuser)


def _schedule(params: dict[str, Any]) -> ScheduleConfig:
    schedule = params.get("beta_schedule", "linear")
    if schedule != "linear":
        raise OfficialConfigError(f"beta_schedule {schedule!r} is not supported (the released models use 'linear')")
    return ScheduleConfig(
        timesteps=params.get("timesteps", 1000),
        linear_start=params.get("linear_start", 0.0015),
        linear_end=params.get("linear_end", 0.0195),
    )


def _latent_size(autoencoder: AutoencoderConfig) -> int:
    return autoencoder.resolution // autoencoder.downsample_factor


def _autoencoder(params: dict[str, Any], scale_factor: float) -> AutoencoderConfig:
    dd = params["ddconfig"]
    if not dd.get("double_z", True):
        raise OfficialConfigError("only the KL autoencoder with double_z: true is supported")
    return AutoencoderConfig(
        ch=dd["ch"],
        ch_mult=tuple(dd["ch_mult"]),
        num_res_blocks=dd["num_res_blocks"],
        attn_resolutions=tuple(dd.get("attn_resolutions", ())),
        resolution=dd["resolution"],
        in_channels=dd.get("in_channels", 3),
        out_ch=dd.get("out_ch", 3),
        z_channels=dd["z_channels"],
        embed_dim=params["embed_dim"],
        scale_factor=scale_factor,
    )


def _unet(p: dict[str, Any]) -> UNetConfig:
    unsupported = {
        key: p[key] for key in ("use_scale_shift_norm", "resblock_updown", "num_classes", "enable_freeu") if p.get(key)
    }
    if unsupported or not p.get("use_spatial_transformer", False):
        raise OfficialConfigError(
            f"UNet options outside the released family: {unsupported or 'use_spatial_transformer: false'}"
        )
    return UNetConfig(
        in_channels=p["in_channels"],
        out_channels=p["out_channels"],
        model_channels=p["model_channels"],
        channel_mult=tuple(p["channel_mult"]),
        num_res_blocks=p["num_res_blocks"],
        attention_resolutions=tuple(p["attention_resolutions"]),
        num_heads=p.get("num_heads", -1),
        num_head_channels=p.get("num_head_channels", -1) if p.get("num_heads", -1) == -1 else -1,
        transformer_depth=p.get("transformer_depth", 1),
        context_dim=p["context_dim"],
    )


def _latent_diffusion(params: dict[str, Any]) -> SystemConfig:
    cond = params["cond_stage_config"]
    cond_target, cond_params = cond["target"], cond.get("params", {})
    if cond_target.endswith("BERTEmbedder"):
        name, encoder = (
            "text",
            TextEncoderConfig(
                width=cond_params["n_embed"],
                depth=cond_params["n_layer"],
                vocab_size=cond_params.get("vocab_size", 30522),
                max_len=cond_params.get("max_seq_len", 77),
            ),
        )
    elif cond_target.endswith("SegMaskEncoder"):
        embed = cond_params.get("mask_embed_dim", 1024)
        side = int(round(embed**0.5))
        if side * side != embed:
            raise OfficialConfigError(f"mask_embed_dim {embed} is not a square number of pixels")
        name, encoder = "mask", MaskEncoderConfig(mask_size=side, context_dim=cond_params["context_dim"])
    else:
        raise OfficialConfigError(f"condition encoder {cond_target!r} is not one of BERTEmbedder, SegMaskEncoder")
    autoencoder = _autoencoder(params["first_stage_config"]["params"], scale_factor=params.get("scale_factor", 1.0))
    return SystemConfig(
        autoencoder=autoencoder,
        modalities={name: ModalityConfig(kind=name, encoder=encoder, expert=_unet(params["unet_config"]["params"]))},
        schedule=_schedule(params),
        latent_size=params.get("image_size", _latent_size(autoencoder)),
    )

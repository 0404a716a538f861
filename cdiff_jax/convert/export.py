"""Our checkpoints -> official Collaborative Diffusion files: `.safetensors`, or a Lightning `.ckpt` written
without torch, so a model trained here runs in the official code and the tools around it.

The converter's inverse, built from the same pieces so the two cannot drift apart: key names from
`keymap.official_key_map`, layouts by inverting `to_flax_layout`, the schedule buffers recomputed from the config.
Our latent shift, which LDM lacks, is folded into the autoencoder's weights; a system the official code cannot
build (another modality kind, settings its YAML has no field for) is refused with what differs, before anything
is read or written.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import uuid
from collections.abc import Mapping

import numpy as np
import safetensors.numpy
from flax import nnx

from cdiff_jax.checkpoint import load_config, load_system
from cdiff_jax.config import AutoencoderConfig, MaskEncoderConfig, SystemConfig, TextEncoderConfig
from cdiff_jax.convert import keymap
from cdiff_jax.convert.converter import expected_type
from cdiff_jax.diffusion.schedule import reference_buffers
from cdiff_jax.modalities import KINDS
from cdiff_jax.paths import creatable_parent
from cdiff_jax.weights.layout import to_torch_layout
from cdiff_jax.weights.torch_writer import write_state_dict

EXPORT_SUFFIXES = (".safetensors", ".ckpt")

# Our settings that no official YAML has a field for: the official code always uses these values. (The latent shift
# has none either, but it can be folded into the weights: `fold_latent_shift`.)
OFFICIAL_CONSTANTS = {
    (TextEncoderConfig, "heads"): 8,  # BERTEmbedder builds x-transformers' Encoder with its default heads
    (TextEncoderConfig, "head_dim"): 64,
    (MaskEncoderConfig, "num_classes"): 19,  # the official data and scripts one-hot 19 classes
}


class ExportError(ValueError):
    """The checkpoint or the destination cannot be exported; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class ExportReport:
    checkpoint_type: str
    parameters: int
    schedule_buffers: int
    zero_heads: int
    autoencoder: AutoencoderConfig

    def summary(self) -> str:
        lines = [f"checkpoint type: {self.checkpoint_type}", f"exported parameters: {self.parameters}"]
        if self.schedule_buffers:
            lines.append(f"schedule buffers: {self.schedule_buffers}, recomputed from the config")
        if self.zero_heads:
            lines.append(f"text-logit head, never run by the official model: {self.zero_heads} tensors of zeros")
        if self.autoencoder.latent_shift:
            shift = ", ".join(f"{v:.6g}" for v in self.autoencoder.latent_shift)
            lines.append(f"latent shift ({shift}) folded into the quant_conv and post_quant_conv biases")
        lines.append(f"scale_factor for the official LDM config: {self.autoencoder.scale_factor:.9g}")
        return "\n".join(lines)


def official_differences(cfg: SystemConfig) -> list[str]:
    """What about `cfg` the official code cannot build, one phrase each; empty when it can."""
    official = [kind for kind, entry in KINDS.items() if entry.official_name]
    differences = [
        f"modality {name!r} is of kind {m.kind!r}, which the official code does not have (only {', '.join(official)})"
        for name, m in cfg.modalities.items()
        if m.kind not in official
    ]
    kinds = sorted(m.kind for m in cfg.modalities.values())
    diffusers = {name: m.diffuser for name, m in cfg.modalities.items() if m.diffuser is not None}
    if diffusers:
        if len(diffusers) < len(cfg.modalities):
            differences.append(
                f"dynamic diffusers only for {', '.join(diffusers)}; the official collaborative model "
                "has one for each modality"
            )
        if kinds != sorted(official):
            differences.append(
                f"the official collaborative model holds one modality of each kind "
                f"({', '.join(official)}); this system holds {', '.join(kinds)}"
            )
        if len(set(diffusers.values())) > 1:
            differences.append(
                "the dynamic diffusers differ; the official collaborative config builds both from one "
                "confidence_map_predictor_config"
            )
    elif len(kinds) > 1:
        differences.append(
            f"{len(kinds)} modalities without dynamic diffusers; an official model of one expert holds one modality"
        )
    for (config_class, field), value in OFFICIAL_CONSTANTS.items():
        for name, m in cfg.modalities.items():
            if isinstance(m.encoder, config_class) and getattr(m.encoder, field) != value:
                differences.append(
                    f"modalities.{name}.encoder.{field} is {getattr(m.encoder, field)!r}; the official "
                    f"code has no setting for it and always uses {value!r}"
                )
    return differences


def fold_latent_shift(autoencoder: AutoencoderConfig, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`params` with the autoencoder's latent shift folded into its weights, for LDM, which only scales latents.

    Ours encodes z = s (mean + std eps - shift) and decodes decoder(post_quant_conv(z / s + shift)). Taking the shift
    off the bias of quant_conv's mean half centres the posterior itself; adding its image under post_quant_conv (a
    1x1 convolution, so linear) to that bias puts it back before the decoder: the same maps, to float rounding.
    """
    params = dict(params)
    if not autoencoder.latent_shift:
        return params
    shift = np.asarray(autoencoder.latent_shift, np.float64)
    quant_bias = np.array(params["autoencoder.quant_conv.bias"], np.float64)
    quant_bias[: shift.size] -= shift
    kernel = np.asarray(params["autoencoder.post_quant_conv.kernel"], np.float64)[0, 0]  # [embed_dim, z_channels]
    post_bias = np.asarray(params["autoencoder.post_quant_conv.bias"], np.float64) + shift @ kernel
    params["autoencoder.quant_conv.bias"] = quant_bias.astype(np.float32)
    params["autoencoder.post_quant_conv.bias"] = post_bias.astype(np.float32)
    return params


def official_state_dict(cfg: SystemConfig, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The official state dict of a system of `cfg` whose parameters are `params` (our dotted paths): float32
    tensors in torch layout, the latent shift folded in, with the schedule buffers and the (zero) text-logit heads
    the official modules hold."""
    checkpoint_type = expected_type(cfg)
    kinds = {name: m.kind for name, m in cfg.modalities.items()}
    names = keymap.official_key_map(params, checkpoint_type, kinds)
    tensors = dict(reference_buffers(cfg.schedule)) if cfg.modalities else {}
    for path, value in fold_latent_shift(cfg.autoencoder, params).items():
        tensors[names[path]] = to_torch_layout(np.asarray(value, np.float32), path.rsplit(".", 1)[-1])
    prefixes = keymap.checkpoint_prefixes(checkpoint_type, kinds)
    for name, m in cfg.modalities.items():
        if isinstance(m.encoder, TextEncoderConfig):
            head = prefixes[f"modalities.{name}.encoder"] + keymap.TEXT_LOGIT_HEAD
            tensors[head + "weight"] = np.zeros((m.encoder.vocab_size, m.encoder.width), np.float32)
            tensors[head + "bias"] = np.zeros(m.encoder.vocab_size, np.float32)
    return tensors


def check_export_destination(out: str | os.PathLike, overwrite: bool) -> pathlib.Path:
    """Where an export may be written: a new `.safetensors` or `.ckpt` path, or with `overwrite` an existing file."""
    out = pathlib.Path(out).absolute()
    if out.suffix not in EXPORT_SUFFIXES:
        raise ExportError(
            f"{out}: the export is written as {' or '.join(EXPORT_SUFFIXES)}, chosen by the suffix; "
            f"{out.suffix or 'no suffix'} is neither"
        )
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} exists; choose a new output path or replace it with --overwrite")
        if not out.is_file():
            raise FileExistsError(
                f"{out} exists and is not a file; --overwrite replaces only files: choose a new output path"
            )
    try:
        creatable_parent(out)
    except OSError as err:
        raise FileExistsError(
            f"cannot write {out}: cannot create folders in {err.filename or out.parent} "
            f"({err.strerror}); choose another output path"
        ) from None
    return out


def export_checkpoint(directory: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> ExportReport:
    """Write our checkpoint `directory` as an official file `out` (format by its suffix), atomically."""
    out = check_export_destination(out, overwrite)
    cfg = load_config(directory)
    differences = official_differences(cfg)
    if differences:
        raise ExportError(
            f"{directory} cannot be exported: the official code cannot build this system: " + "; ".join(differences)
        )
    state = nnx.to_flat_state(nnx.state(load_system(directory), nnx.Param))
    tensors = official_state_dict(cfg, {".".join(map(str, path)): var.get_value() for path, var in state})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if out.suffix == ".ckpt":
            write_state_dict(tmp, tensors, lightning=True)
        else:
            safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    heads = sum(keymap.TEXT_LOGIT_HEAD in key for key in tensors)
    buffers = sum(key in keymap.SCHEDULE_BUFFERS for key in tensors)
    return ExportReport(expected_type(cfg), len(state), buffers, heads, cfg.autoencoder)

"""Official state dicts -> our parameter trees, strictly.

Strict means: every parameter of the target system must be found with the right shape, every
official tensor must be used or deliberately dropped, and the schedule buffers must equal
the schedule we recompute. Anything else fails the conversion with the full list.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from cdiff_jax.checkpoint import check_destination, save_system
from cdiff_jax.config import SystemConfig, load_config
from cdiff_jax.convert import keymap
from cdiff_jax.diffusion.schedule import reference_buffers
from cdiff_jax.progress import bar
from cdiff_jax.system import LatentDiffusionSystem, abstract_system
from cdiff_jax.weights.layout import to_flax_layout
from cdiff_jax.weights.state_dict_io import read_state_dict


class ConversionError(ValueError):
    pass


@dataclasses.dataclass
class ConversionReport:
    checkpoint_type: str
    converted: int = 0
    dropped: list[str] = dataclasses.field(default_factory=list)
    schedule_checked: bool = False

    def summary(self) -> str:
        lines = [f"checkpoint type: {self.checkpoint_type}", f"converted tensors: {self.converted}"]
        if self.dropped:
            lines.append(f"dropped on purpose (training losses, unused text logits): {len(self.dropped)} tensors")
        lines.append("schedule buffers: " + ("match the recomputed schedule" if self.schedule_checked else "absent"))
        return "\n".join(lines)


def detect_checkpoint_type(keys) -> str:
    """vae, mask, text or codiff, from the key names alone."""
    keys = set(keys)
    if any(k.startswith("model.text_unet.") for k in keys):
        return "codiff"
    if "cond_stage_model.linear.weight" in keys:
        return "mask"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "text"
    if "encoder.conv_in.weight" in keys:
        return "vae"
    raise ConversionError(
        "cannot tell the checkpoint type from its keys: expected an official autoencoder, mask, text or "
        "collaborative checkpoint; for another one pass --config with the architecture it was trained with"
    )


def released_config_for(checkpoint_type: str, keys) -> SystemConfig:
    """The released config matching the type and the autoencoder depth (3 levels: 256, 4: 512)."""
    prefix = "" if checkpoint_type == "vae" else "first_stage_model."
    levels = {k.split(".")[2] for k in keys if k.startswith(prefix + "encoder.down.")}
    resolution = {3: 256, 4: 512}.get(len(levels))
    if resolution is None:
        raise ConversionError(
            f"the autoencoder has {len(levels)} levels, which matches no released model; pass --config"
        )
    return load_config(f"released.py:{resolution}_{checkpoint_type}")


def expected_type(cfg: SystemConfig) -> str:
    if not cfg.modalities:
        return "vae"
    if cfg.is_collaborative and len(cfg.modalities) > 1:
        return "codiff"
    (only,) = cfg.modalities.values()
    return only.kind


def system_from_state_dict(
    tensors: dict[str, np.ndarray], cfg: SystemConfig, checkpoint_type: str | None = None
) -> tuple[LatentDiffusionSystem, ConversionReport]:
    """Build our system from an official state dict; raises ConversionError listing every problem."""
    checkpoint_type = checkpoint_type or detect_checkpoint_type(tensors)
    if checkpoint_type != expected_type(cfg):
        raise ConversionError(
            f"the checkpoint is of type {checkpoint_type!r} but the config describes a {expected_type(cfg)!r} model"
        )
    system = abstract_system(cfg)
    abstract = nnx.to_flat_state(nnx.state(system, nnx.Param))
    ours = {".".join(map(str, path)): var for path, var in abstract}
    kinds = {name: m.kind for name, m in cfg.modalities.items()}
    names = keymap.official_key_map(ours, checkpoint_type, kinds)

    report = ConversionReport(checkpoint_type)
    wanted = set(names.values())
    schedule = set(keymap.SCHEDULE_BUFFERS)
    unexpected, values, mismatched = [], {}, []
    for key in tensors:
        if key in wanted or key in schedule:
            continue
        (report.dropped if keymap.is_ignored(key) else unexpected).append(key)
    missing = sorted(k for k in wanted if k not in tensors)
    for path, official in bar(names.items(), "converting", unit="tensor"):
        if official not in tensors:
            continue
        shape = tuple(ours[path].shape)
        value = to_flax_layout(np.asarray(tensors[official], np.float32), path.rsplit(".", 1)[-1])
        if value.shape != shape:
            mismatched.append(f"{official}: checkpoint {tuple(tensors[official].shape)}, model expects {shape}")
        values[path] = value
    problems = _describe("missing", missing) + _describe("unexpected", sorted(unexpected))
    problems += _describe("shape mismatch", mismatched)
    if problems:
        raise ConversionError(
            "checkpoint does not match the config (pass the config it was trained with via --config):\n"
            + "\n".join(problems)
        )
    report.schedule_checked = _check_schedule(tensors, cfg)
    report.converted = len(values)

    flat = [(tuple(_key(p) for p in path.split(".")), jax.numpy.asarray(values[path])) for path in ours]
    state = nnx.state(system, nnx.Param)
    nnx.replace_by_pure_dict(state, nnx.to_pure_dict(nnx.from_flat_state(flat)))
    nnx.update(system, state)
    return system, report


def _key(part: str):
    return int(part) if part.isdigit() else part


def _describe(kind: str, items: list[str], limit: int = 20) -> list[str]:
    if not items:
        return []
    shown = [f"  {kind}: {item}" for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"  ... and {len(items) - limit} more {kind}")
    return [f"{len(items)} {kind}:"] + shown


def _check_schedule(tensors: dict[str, np.ndarray], cfg: SystemConfig) -> bool:
    present = [name for name in keymap.SCHEDULE_BUFFERS if name in tensors]
    if not present:
        return False
    expected = reference_buffers(cfg.schedule)
    for name in present:
        got = np.asarray(tensors[name], np.float64)
        ref = expected[name].astype(np.float64)
        if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-5, atol=1e-7):
            raise ConversionError(
                f"schedule buffer {name!r} differs from the {cfg.schedule} schedule; "
                "the checkpoint was trained with another schedule: pass its config"
            )
    return True


def convert_checkpoint(src, dst, config: SystemConfig | None = None, *, overwrite: bool = False) -> ConversionReport:
    """Read an official .ckpt/.safetensors, convert it strictly and save it as our checkpoint.

    Without `config`, the released config matching the detected type and resolution is used.
    """
    check_destination(dst, overwrite)
    loaded = read_state_dict(src)
    if config is None:  # a given config says the type; the strict key map then checks the file against it
        checkpoint_type = detect_checkpoint_type(loaded.tensors)
        config = released_config_for(checkpoint_type, loaded.tensors)
    system, report = system_from_state_dict(loaded.tensors, config, expected_type(config))
    save_system(dst, system, overwrite=overwrite)
    return report

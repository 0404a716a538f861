"""StyleGAN2 generators from their released formats -> our `Generator`, strictly.

Sources: NVIDIA stylegan2-ada-pytorch network pickles (`G_ema`, architecture from the recorded
constructor kwargs), rosinality `.pt` files (`{'g_ema', 'latent_avg'}`, convert_weight.py's layout)
and pSp / e4e checkpoints (the same generator under `decoder.` in `state_dict`, `latent_avg` at the
top); rosinality's architecture is read off the tensor shapes. Strict: every tensor of our model is
filled with the right shape and every source tensor is used or checked (FIR filter buffers must
equal the configured filter); anything else fails with the full list. The discriminator of an
NVIDIA snapshot converts the same way (`load_nvidia_discriminator`), for training.

Layouts: ours are HWIO convolutions, [in, out] dense weights, a [4, 4, C] constant. Both sources
compute the up-convolution as a true transposed convolution of the stored kernel, as we do, so
no kernel is flipped.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from cdiff_jax.config import EG3DConfig, StyleGAN2Config, StyleGAN2DiscriminatorConfig
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.nn.stylegan2 import Generator, fir_filter
from cdiff_jax.nn.stylegan2_discriminator import Discriminator
from cdiff_jax.weights.network_pickle import read_network_pickle
from cdiff_jax.weights.state_dict_io import read_torch_object

NVIDIA_GENERATOR = "Generator"  # the persistent class name of training.networks.Generator
PICKLE_SUFFIX = ".pkl"
TORCH_SUFFIXES = (".pt", ".pth")
SUPPORTED = (
    "NVIDIA stylegan2-ada-pytorch network pickle (.pkl with G_ema)",
    "rosinality .pt ({'g_ema': state_dict, 'latent_avg'})",
    "pSp / e4e .pt (generator under 'decoder.' in 'state_dict', top-level 'latent_avg')",
)


class GANConversionError(ValueError):
    pass


LeafPath = tuple  # a leaf's path in our state: ('synthesis', 'blocks', 0, 'conv1', 'weight')


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one source tensor goes: our leaf and the layout change, or a filter it must equal."""

    path: LeafPath | None
    transform: Callable = lambda a: a
    expected: np.ndarray | None = None  # for FIR filter buffers, which we derive from the config
    # path and expected both None: a tensor the forward pass never reads (EG3D's dataset_label_std)


def _conv(a):  # [O, I, k, k] -> [k, k, I, O]
    return a.transpose(2, 3, 1, 0)


def _fc(a):  # [out, in] -> [in, out]
    return a.T


# --- architecture -----------------------------------------------------------------------------

_MAPPING_KWARGS = {
    "num_layers": "mapping_layers",
    "lr_multiplier": "mapping_lr_multiplier",
    "layer_features": "mapping_layer_features",
    "embed_features": "embed_features",
    "w_avg_beta": "w_avg_beta",
}
_SYNTHESIS_KWARGS = {
    "channel_base": "channel_base",
    "channel_max": "channel_max",
    "conv_clamp": "conv_clamp",
    "architecture": "architecture",
    "resample_filter": "resample_filter",
}
# Precision / memory-layout switches of the official code; float32 forward passes do not use them.
_IGNORED_KWARGS = {"num_fp16_res", "fp16_channels_last", "fused_modconv_default"}
_REQUIRED = {"activation": "lrelu", "use_noise": True, "kernel_size": 3}


def config_from_init_kwargs(kwargs: Mapping) -> StyleGAN2Config:
    """StyleGAN2Config from `Generator.init_kwargs` as the official persistence module records them."""
    kwargs = dict(kwargs)
    fields = {k: kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if k in kwargs}
    unknown = []
    for group, names in (("mapping_kwargs", _MAPPING_KWARGS), ("synthesis_kwargs", _SYNTHESIS_KWARGS)):
        for key, value in dict(kwargs.pop(group, None) or {}).items():
            if key in names:
                fields[names[key]] = tuple(value) if isinstance(value, list) else value
            elif key in _REQUIRED and value == _REQUIRED[key] or key in _IGNORED_KWARGS:
                continue
            else:
                unknown.append(f"{group}.{key}={value!r}")
    unknown += [f"{k}={v!r}" for k, v in kwargs.items() if k not in _IGNORED_KWARGS]
    if unknown:
        raise GANConversionError(f"generator kwargs not supported by our StyleGAN2: {', '.join(unknown)}")
    try:
        return StyleGAN2Config(**fields)
    except (TypeError, ValueError) as err:
        raise GANConversionError(f"generator kwargs {fields}: {err}") from None


def config_from_rosinality_shapes(shapes: Mapping[str, tuple], *, lr_multiplier: float = 0.01) -> StyleGAN2Config:
    """rosinality `Generator(size, style_dim, n_mlp, channel_multiplier)` read off its state dict's shapes.

    lr_mlp is not stored; 0.01 is the constructor default, used by every released conversion.
    """
    try:
        n_mlp = len([k for k in shapes if re.fullmatch(r"style\.\d+\.weight", k)])
        style_dim = shapes["style.1.weight"][1]
        n_up = len([k for k in shapes if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
        channels = {4: shapes["input.input"][1]}
        channels.update({2 ** (k + 3): shapes[f"convs.{2 * k}.conv.weight"][1] for k in range(n_up)})
        img_channels = shapes["to_rgb1.conv.weight"][1]
    except KeyError as err:
        raise GANConversionError(f"not a rosinality StyleGAN2 generator state dict: no {err.args[0]!r}") from None
    resolution = 2 ** (n_up + 2)
    cfg = StyleGAN2Config(
        z_dim=style_dim,
        w_dim=style_dim,
        img_resolution=resolution,
        img_channels=img_channels,
        mapping_layers=n_mlp,
        mapping_lr_multiplier=lr_multiplier,
        channel_base=channels[resolution] * resolution,
        channel_max=max(channels.values()),
    )
    if any(cfg.channels(r) != c for r, c in channels.items()):
        raise GANConversionError(
            f"channel widths {channels} do not follow min(base / res, max) for any base and max; "
            "this generator's channel table is not supported"
        )
    return cfg


# --- key maps ---------------------------------------------------------------------------------


def _nvidia_mapping_entries(cfg) -> dict[str, Entry]:
    """The label embedding (if conditional) and FC layers of an NVIDIA mapping network."""
    entries = {}
    if cfg.c_dim:
        entries["mapping.embed.weight"] = Entry(("mapping", "embed", "weight"), _fc)
        entries["mapping.embed.bias"] = Entry(("mapping", "embed", "bias"))
    for i in range(cfg.mapping_layers):
        entries[f"mapping.fc{i}.weight"] = Entry(("mapping", "layers", i, "weight"), _fc)
        entries[f"mapping.fc{i}.bias"] = Entry(("mapping", "layers", i, "bias"))
    return entries


def nvidia_block_entries(src: str, dst: LeafPath, taps, *, first: bool = False) -> dict[str, Entry]:
    """One NVIDIA `SynthesisBlock` (or EG3D's `SynthesisBlockNoUp`, the same keys) -> our block."""
    filt = Entry(None, expected=fir_filter(taps, 1.0))
    entries = {f"{src}.resample_filter": filt}
    if first:
        entries[f"{src}.const"] = Entry((*dst, "const"), lambda a: a.transpose(1, 2, 0))
    for conv in ("conv1",) if first else ("conv0", "conv1"):
        s, d = f"{src}.{conv}", (*dst, conv)
        entries |= {
            f"{s}.weight": Entry((*d, "weight"), _conv),
            f"{s}.bias": Entry((*d, "bias")),
            f"{s}.noise_strength": Entry((*d, "noise_strength")),
            f"{s}.noise_const": Entry((*d, "noise_const")),
            f"{s}.resample_filter": filt,
            f"{s}.affine.weight": Entry((*d, "affine", "weight"), _fc),
            f"{s}.affine.bias": Entry((*d, "affine", "bias")),
        }
    s, d = f"{src}.torgb", (*dst, "torgb")
    return entries | {
        f"{s}.weight": Entry((*d, "weight"), lambda a: a[:, :, 0, 0].T),
        f"{s}.bias": Entry((*d, "bias")),
        f"{s}.affine.weight": Entry((*d, "affine", "weight"), _fc),
        f"{s}.affine.bias": Entry((*d, "affine", "bias")),
    }


def nvidia_key_map(cfg: StyleGAN2Config) -> dict[str, Entry]:
    """stylegan2-ada-pytorch `Generator.state_dict()` keys -> our leaves."""
    entries = {"mapping.w_avg": Entry(("mapping", "w_avg")), **_nvidia_mapping_entries(cfg)}
    for b, res in enumerate(cfg.block_resolutions):
        entries |= nvidia_block_entries(
            f"synthesis.b{res}", ("synthesis", "blocks", b), cfg.resample_filter, first=b == 0
        )
    return entries


def rosinality_key_map(cfg: StyleGAN2Config) -> dict[str, Entry]:
    """rosinality `Generator.state_dict()` keys (plus the checkpoint's `latent_avg`) -> our leaves."""
    entries = {"latent_avg": Entry(("mapping", "w_avg"))}
    for i in range(cfg.mapping_layers):
        entries[f"style.{i + 1}.weight"] = Entry(("mapping", "layers", i, "weight"), _fc)
        entries[f"style.{i + 1}.bias"] = Entry(("mapping", "layers", i, "bias"))
    up = Entry(None, expected=fir_filter(cfg.resample_filter, 4.0))
    noise_index = 0

    def styled_conv(src: str, dst: LeafPath, up_conv: bool) -> dict[str, Entry]:
        nonlocal noise_index
        out = {
            f"{src}.conv.weight": Entry((*dst, "weight"), lambda a: _conv(a[0])),
            f"{src}.conv.modulation.weight": Entry((*dst, "affine", "weight"), _fc),
            f"{src}.conv.modulation.bias": Entry((*dst, "affine", "bias")),
            f"{src}.noise.weight": Entry((*dst, "noise_strength"), lambda a: a.reshape(())),
            f"{src}.activate.bias": Entry((*dst, "bias")),
            f"noises.noise_{noise_index}": Entry((*dst, "noise_const"), lambda a: a.reshape(a.shape[-2:])),
        }
        if up_conv:
            out[f"{src}.conv.blur.kernel"] = up
        noise_index += 1
        return out

    def to_rgb(src: str, dst: LeafPath) -> dict[str, Entry]:
        return {
            f"{src}.conv.weight": Entry((*dst, "weight"), lambda a: a[0, :, :, 0, 0].T),
            f"{src}.conv.modulation.weight": Entry((*dst, "affine", "weight"), _fc),
            f"{src}.conv.modulation.bias": Entry((*dst, "affine", "bias")),
            f"{src}.bias": Entry((*dst, "bias"), lambda a: a.reshape(-1)),
        }

    block = ("synthesis", "blocks", 0)
    entries["input.input"] = Entry((*block, "const"), lambda a: a[0].transpose(1, 2, 0))
    entries |= styled_conv("conv1", (*block, "conv1"), up_conv=False)
    entries |= to_rgb("to_rgb1", (*block, "torgb"))
    for k in range(len(cfg.block_resolutions) - 1):
        block = ("synthesis", "blocks", k + 1)
        entries |= styled_conv(f"convs.{2 * k}", (*block, "conv0"), up_conv=True)
        entries |= styled_conv(f"convs.{2 * k + 1}", (*block, "conv1"), up_conv=False)
        entries |= to_rgb(f"to_rgbs.{k}", (*block, "torgb"))
        entries[f"to_rgbs.{k}.upsample.kernel"] = up
    return entries


def discriminator_config_from_init_kwargs(kwargs: Mapping) -> StyleGAN2DiscriminatorConfig:
    """StyleGAN2DiscriminatorConfig from `Discriminator.init_kwargs` as the persistence module records them."""
    kwargs = dict(kwargs)
    fields = {
        k: kwargs.pop(k)
        for k in (
            "c_dim",
            "img_resolution",
            "img_channels",
            "channel_base",
            "channel_max",
            "conv_clamp",
            "cmap_dim",
            "architecture",
        )
        if k in kwargs
    }
    groups = {
        "block_kwargs": {"resample_filter": "resample_filter"},
        "mapping_kwargs": {"num_layers": "mapping_layers", "lr_multiplier": "mapping_lr_multiplier"},
        "epilogue_kwargs": {"mbstd_group_size": "mbstd_group_size", "mbstd_num_channels": "mbstd_num_channels"},
    }
    unknown = []
    for group, names in groups.items():
        for key, value in dict(kwargs.pop(group, None) or {}).items():
            if key in names:
                fields[names[key]] = tuple(value) if isinstance(value, list) else value
            elif not (key in _REQUIRED and value == _REQUIRED[key] or key in _IGNORED_KWARGS):
                unknown.append(f"{group}.{key}={value!r}")
    unknown += [f"{k}={v!r}" for k, v in kwargs.items() if k not in _IGNORED_KWARGS]
    if unknown:
        raise GANConversionError(
            f"discriminator kwargs not supported by our StyleGAN2 discriminator: {', '.join(unknown)}"
        )
    try:
        return StyleGAN2DiscriminatorConfig(**fields)
    except (TypeError, ValueError) as err:
        raise GANConversionError(f"discriminator kwargs {fields}: {err}") from None


def nvidia_discriminator_key_map(cfg: StyleGAN2DiscriminatorConfig) -> dict[str, Entry]:
    """stylegan2-ada-pytorch `Discriminator.state_dict()` keys -> our leaves."""
    filt = Entry(None, expected=fir_filter(cfg.resample_filter, 1.0))
    entries = {}
    for b, res in enumerate(cfg.block_resolutions):
        src, dst = f"b{res}", ("blocks", b)
        entries[f"{src}.resample_filter"] = filt
        for name in ("fromrgb", "conv0", "conv1", "skip") if b == 0 else ("conv0", "conv1", "skip"):
            entries[f"{src}.{name}.weight"] = Entry((*dst, name, "weight"), _conv)
            entries[f"{src}.{name}.resample_filter"] = filt
            if name != "skip":
                entries[f"{src}.{name}.bias"] = Entry((*dst, name, "bias"))
    entries |= {
        "b4.conv.weight": Entry(("epilogue", "conv", "weight"), _conv),
        "b4.conv.bias": Entry(("epilogue", "conv", "bias")),
        "b4.conv.resample_filter": filt,
    }
    for name in ("fc", "out"):
        entries[f"b4.{name}.weight"] = Entry(("epilogue", name, "weight"), _fc)
        entries[f"b4.{name}.bias"] = Entry(("epilogue", name, "bias"))
    if cfg.c_dim:  # the conditional discriminator maps its label with a mapping network of its own
        entries.update(_nvidia_mapping_entries(cfg))
    return entries


# --- strict application -------------------------------------------------------------------------


def _leaves(tree, prefix=()) -> dict[LeafPath, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= _leaves(value, (*prefix, key))
        else:
            out[(*prefix, key)] = value
    return out


NETWORKS = {StyleGAN2Config: Generator, StyleGAN2DiscriminatorConfig: Discriminator, EG3DConfig: TriPlaneGenerator}


def abstract_network(cfg: StyleGAN2Config | StyleGAN2DiscriminatorConfig | EG3DConfig):
    """The network of `cfg` with shape-only leaves: no memory, no random draws."""
    return nnx.eval_shape(lambda: NETWORKS[type(cfg)](cfg, rngs=nnx.Rngs(0)))


def check_key_map(
    entries: Mapping[str, Entry],
    shapes: Mapping[str, tuple],
    cfg: StyleGAN2Config | StyleGAN2DiscriminatorConfig | EG3DConfig,
) -> None:
    """Raise unless the source keys and our leaves correspond one to one with matching shapes."""
    ours = {p: tuple(v.shape) for p, v in _leaves(nnx.to_pure_dict(nnx.state(abstract_network(cfg)))).items()}
    targets = {e.path for e in entries.values() if e.path is not None}
    problems = [f"missing in source: {k}" for k in entries if k not in shapes]
    problems += [f"unexpected in source: {k} {list(shapes[k])}" for k in shapes if k not in entries]
    problems += [f"not filled by any source tensor: {'.'.join(map(str, p))}" for p in ours if p not in targets]
    for key, entry in entries.items():
        if key not in shapes:
            continue
        if entry.path is None and entry.expected is None:
            continue
        if entry.path is None:
            got, want = tuple(shapes[key]), entry.expected.shape
        else:
            got = jax.eval_shape(entry.transform, jax.ShapeDtypeStruct(tuple(shapes[key]), np.float32)).shape
            want = ours.get(entry.path)
        if got != want:
            problems.append(f"misshaped: {key} {list(shapes[key])} (gives {list(got)}, expected {list(want or ())})")
    if problems:
        raise GANConversionError(f"{len(problems)} key problem(s): " + "; ".join(problems))


def network_from_state_dict(
    tensors: Mapping[str, np.ndarray],
    cfg: StyleGAN2Config | StyleGAN2DiscriminatorConfig | EG3DConfig,
    entries: Mapping[str, Entry],
):
    """Our generator or discriminator with every leaf taken from `tensors` through `entries` (the key maps)."""
    check_key_map(entries, {k: np.shape(v) for k, v in tensors.items()}, cfg)
    bad = [
        k
        for k, e in entries.items()
        if e.path is None and e.expected is not None and not np.allclose(tensors[k], e.expected, rtol=0, atol=1e-6)
    ]
    if bad:
        raise GANConversionError(f"FIR filter buffers differ from resample_filter {cfg.resample_filter}: {bad}")
    values = {
        e.path: np.asarray(e.transform(np.asarray(tensors[k])), np.float32)
        for k, e in entries.items()
        if e.path is not None
    }
    graphdef, state = nnx.split(abstract_network(cfg))
    pure = nnx.to_pure_dict(state)
    for path, value in values.items():
        node = pure
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = jax.numpy.asarray(value)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


# --- files ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedGenerator:
    generator: Generator
    source_format: str  # "nvidia-pickle", "rosinality" or "psp"


def load_nvidia_pickle(path: pathlib.Path) -> LoadedGenerator:
    return generator_from_snapshot(read_network_pickle(path), path)


def generator_from_snapshot(snapshot, path) -> LoadedGenerator:
    """`G_ema` of a read stylegan2-ada-pytorch snapshot (`path` only names it in errors)."""
    if not isinstance(snapshot, Mapping) or "G_ema" not in snapshot:
        have = sorted(map(str, snapshot)) if isinstance(snapshot, Mapping) else type(snapshot).__name__
        raise GANConversionError(
            f"{path}: no 'G_ema' in the network pickle (it has {have}); expected a stylegan2-ada-pytorch snapshot"
        )
    g = snapshot["G_ema"]
    if g.class_name != NVIDIA_GENERATOR or g.init_args:
        raise GANConversionError(
            f"{path}: G_ema is a persistent {g.class_name!r} "
            f"(positional args {list(g.init_args)}); "
            "only stylegan2-ada-pytorch's Generator, built from keyword arguments, is supported"
        )
    cfg = config_from_init_kwargs(g.init_kwargs)
    return LoadedGenerator(network_from_state_dict(g.state_dict(), cfg, nvidia_key_map(cfg)), "nvidia-pickle")


def load_nvidia_discriminator(path) -> Discriminator:
    """The discriminator `D` of a stylegan2-ada-pytorch snapshot (for training, e.g. fine-tuning)."""
    snapshot = read_network_pickle(path)
    d = snapshot.get("D") if isinstance(snapshot, Mapping) else None
    if d is None or d.class_name != "Discriminator" or d.init_args:
        have = sorted(map(str, snapshot)) if isinstance(snapshot, Mapping) else type(snapshot).__name__
        raise GANConversionError(
            f"{path}: no stylegan2-ada-pytorch 'D' (Discriminator) in the network pickle (it has {have})"
        )
    cfg = discriminator_config_from_init_kwargs(d.init_kwargs)
    return network_from_state_dict(d.state_dict(), cfg, nvidia_discriminator_key_map(cfg))


def rosinality_generator(tensors: Mapping[str, np.ndarray], latent_avg: np.ndarray) -> Generator:
    """A rosinality generator state dict plus its checkpoint's latent_avg -> our Generator."""
    tensors = {**tensors, "latent_avg": latent_avg}
    cfg = config_from_rosinality_shapes({k: np.shape(v) for k, v in tensors.items()})
    return network_from_state_dict(tensors, cfg, rosinality_key_map(cfg))


def load_gan_torch_file(path: pathlib.Path) -> LoadedGenerator:
    return generator_from_torch_object(read_torch_object(path), path)


def generator_from_torch_object(top, path) -> LoadedGenerator:
    """The generator in an unpickled rosinality or pSp / e4e checkpoint (`path` only names it in errors)."""
    if isinstance(top, Mapping) and "g_ema" in top and "latent_avg" in top:
        return LoadedGenerator(rosinality_generator(top["g_ema"], top["latent_avg"]), "rosinality")
    if isinstance(top, Mapping) and isinstance(top.get("state_dict"), Mapping) and "latent_avg" in top:
        decoder = {k[len("decoder.") :]: v for k, v in top["state_dict"].items() if k.startswith("decoder.")}
        if decoder:
            return LoadedGenerator(rosinality_generator(decoder, top["latent_avg"]), "psp")
    have = sorted(map(str, top))[:12] if isinstance(top, Mapping) else type(top).__name__
    raise GANConversionError(
        f"{path}: not a recognised GAN checkpoint (top level: {have}); supported: " + "; ".join(SUPPORTED)
    )


def load_gan_file(src) -> LoadedGenerator:
    path = pathlib.Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass a StyleGAN2 .pkl or rosinality/pSp/e4e .pt")
    if path.suffix.lower() == PICKLE_SUFFIX:
        return load_nvidia_pickle(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return load_gan_torch_file(path)
    raise GANConversionError(f"{path}: unsupported file type {path.suffix!r}; supported: " + "; ".join(SUPPORTED))

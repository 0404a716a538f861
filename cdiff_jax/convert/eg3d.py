"""EG3D network pickles -> our `TriPlaneGenerator`, strictly, without running anything from the file.

The architecture and the rendering settings come from what the pickle stores: `G_ema`'s recorded
constructor arguments (with their `rendering_kwargs`) and its `neural_rendering_resolution`
attribute, never from the embedded code. Weights map through the StyleGAN2 key maps (the backbone
is a StyleGAN2 generator, the super-resolution blocks are StyleGAN2 blocks) plus the decoder's two
layers; `dataset_label_std`, a buffer the training loop registers and the forward pass never reads,
is accepted and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdiff_jax.config import EG3D_SUPERRESOLUTION, EG3DConfig
from cdiff_jax.convert.stylegan2 import (
    Entry,
    GANConversionError,
    config_from_init_kwargs,
    network_from_state_dict,
    nvidia_block_entries,
    nvidia_key_map,
)
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.nn.stylegan2 import fir_filter
from cdiff_jax.weights.network_pickle import read_network_pickle

EG3D_GENERATOR = "TriPlaneGenerator"
SR_MODULE_PREFIX = "training.superresolution."
# rendering_kwargs -> EG3DConfig fields; the rest configure training (regularisers, pose conditioning draws).
_RENDERING_FIELDS = {
    "depth_resolution": "depth_resolution",
    "depth_resolution_importance": "depth_resolution_importance",
    "ray_start": "ray_start",
    "ray_end": "ray_end",
    "box_warp": "box_warp",
    "disparity_space_sampling": "disparity_space_sampling",
    "white_back": "white_back",
    "c_scale": "c_scale",
    "c_gen_conditioning_zero": "c_gen_conditioning_zero",
    "decoder_lr_mul": "decoder_lr_multiplier",
    "sr_antialias": "sr_antialias",
    "superresolution_noise_mode": "superresolution_noise_mode",
    "avg_camera_radius": "avg_camera_radius",
    "avg_camera_pivot": "avg_camera_pivot",
}
_TRAINING_ONLY = {
    "image_resolution",
    "gpc_reg_prob",
    "density_reg",
    "density_reg_p_dist",
    "reg_type",
    "density_noise",
    "clamp_mode",
    "superresolution_module",
    "sr_upsample_ctx",
}


def config_from_pickle(init_kwargs: Mapping, neural_rendering_resolution) -> EG3DConfig:
    """EG3DConfig from `TriPlaneGenerator.init_kwargs` and the pickled rendering resolution."""
    kwargs = dict(init_kwargs)
    rendering = dict(kwargs.pop("rendering_kwargs", None) or {})
    module = str(rendering.get("superresolution_module", ""))
    name = module.removeprefix(SR_MODULE_PREFIX)
    if not module.startswith(SR_MODULE_PREFIX) or name not in EG3D_SUPERRESOLUTION:
        raise GANConversionError(
            f"super-resolution module {module!r} is not supported; supported: "
            + ", ".join(SR_MODULE_PREFIX + n for n in sorted(EG3D_SUPERRESOLUTION))
        )
    if rendering.get("clamp_mode", "softplus") != "softplus":
        raise GANConversionError(f"clamp_mode {rendering['clamp_mode']!r}: EG3D's ray marcher supports only 'softplus'")
    sr_fp16 = kwargs.pop("sr_num_fp16_res", 0)
    kwargs.pop("sr_kwargs", None)  # channel widths and fp16 switches the super-resolution modules ignore
    if kwargs.get("img_channels", 3) != 3:
        raise GANConversionError(f"img_channels {kwargs['img_channels']}: EG3D renders RGB (3)")
    mapping = kwargs.get("mapping_kwargs") or {}  # EG3D's own default w_avg_beta differs from StyleGAN2-ADA's
    named = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
    synthesis = {k: v for k, v in kwargs.items() if k not in named}  # EG3D passes them flat, not nested
    backbone = config_from_init_kwargs(
        {
            **{k: kwargs[k] for k in ("z_dim", "c_dim", "w_dim") if k in kwargs},
            "mapping_kwargs": kwargs.get("mapping_kwargs") or {},
            "synthesis_kwargs": synthesis,
            "img_resolution": 256,
            "img_channels": 96,
        }
    )
    unknown = [f"rendering_kwargs.{k}" for k in rendering if k not in _RENDERING_FIELDS and k not in _TRAINING_ONLY]
    if unknown:
        raise GANConversionError(f"EG3D settings not supported: {', '.join(unknown)}")
    fields = {ours: rendering[theirs] for theirs, ours in _RENDERING_FIELDS.items() if theirs in rendering}
    if "avg_camera_pivot" in fields:
        fields["avg_camera_pivot"] = tuple(float(v) for v in fields["avg_camera_pivot"])
    for name_, kind in (
        ("ray_start", float),
        ("ray_end", float),
        ("box_warp", float),
        ("c_scale", float),
        ("decoder_lr_multiplier", float),
        ("avg_camera_radius", float),
    ):
        if name_ in fields and isinstance(fields[name_], (int, float)):
            fields[name_] = kind(fields[name_])
    try:
        return EG3DConfig(
            z_dim=backbone.z_dim,
            c_dim=backbone.c_dim,
            w_dim=backbone.w_dim,
            img_resolution=kwargs["img_resolution"],
            mapping_layers=backbone.mapping_layers,
            mapping_layer_features=backbone.mapping_layer_features,
            embed_features=backbone.embed_features,
            mapping_lr_multiplier=backbone.mapping_lr_multiplier,
            w_avg_beta=backbone.w_avg_beta if "w_avg_beta" in mapping else EG3DConfig.w_avg_beta,
            channel_base=backbone.channel_base,
            channel_max=backbone.channel_max,
            conv_clamp=backbone.conv_clamp,
            superresolution=name,
            sr_conv_clamp=256.0 if sr_fp16 > 0 else None,
            neural_rendering_resolution=int(neural_rendering_resolution),
            **fields,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise GANConversionError(f"EG3D generator kwargs: {err}") from None


def eg3d_key_map(cfg: EG3DConfig) -> dict[str, Entry]:
    """EG3D `TriPlaneGenerator.state_dict()` keys -> our leaves."""
    entries = {
        f"backbone.{k}": Entry(None if e.path is None else ("backbone", *e.path), e.transform, e.expected)
        for k, e in nvidia_key_map(cfg.backbone).items()
    }
    taps = cfg.superresolution_blocks.resample_filter
    if cfg.superresolution != "SuperresolutionHybrid8XDC":  # the one module without a filter buffer of its own
        entries["superresolution.resample_filter"] = Entry(None, expected=fir_filter(taps, 1.0))
    for b in range(len(cfg.sr.blocks)):
        entries |= nvidia_block_entries(f"superresolution.block{b}", ("superresolution", "blocks", b), taps)
    for index, layer in ((0, "hidden"), (2, "output")):
        entries[f"decoder.net.{index}.weight"] = Entry(("decoder", layer, "weight"), lambda a: a.T)
        entries[f"decoder.net.{index}.bias"] = Entry(("decoder", layer, "bias"))
    return entries | {"dataset_label_std": Entry(None)}


def load_eg3d_pickle(path) -> TriPlaneGenerator:
    """`G_ema` of an EG3D snapshot (ffhq512-128.pkl, ...) as our generator."""
    return generator_from_snapshot(read_network_pickle(path), path)


def is_eg3d_snapshot(snapshot) -> bool:
    g = snapshot.get("G_ema") if isinstance(snapshot, Mapping) else None
    return getattr(g, "class_name", None) == EG3D_GENERATOR


def generator_from_snapshot(snapshot, path) -> TriPlaneGenerator:
    """`G_ema` of a read EG3D snapshot (`path` only names it in errors)."""
    g = snapshot.get("G_ema") if isinstance(snapshot, Mapping) else None
    if not is_eg3d_snapshot(snapshot) or g.init_args:
        have = g.class_name if g is not None else sorted(map(str, snapshot))
        raise GANConversionError(
            f"{path}: G_ema is not EG3D's {EG3D_GENERATOR} built from keyword arguments (found {have})"
        )
    resolution = g.attributes.get("neural_rendering_resolution")
    if not isinstance(resolution, int) or resolution < 1:
        raise GANConversionError(f"{path}: G_ema has no usable neural_rendering_resolution ({resolution!r})")
    try:
        cfg = config_from_pickle(g.init_kwargs, resolution)
    except GANConversionError as err:
        raise GANConversionError(f"{path}: {err}") from None
    tensors, entries = g.state_dict(), eg3d_key_map(cfg)
    if "dataset_label_std" not in tensors:  # every training snapshot has it; a network saved otherwise may not
        del entries["dataset_label_std"]
    return network_from_state_dict(tensors, cfg, entries)

"""Model configuration: plain frozen dataclasses that say what to build.

Every hyperparameter of a network lives here and nowhere else; the modules read them, the
converter translates official YAML into them, and checkpoints store them as JSON beside the
weights so a checkpoint directory is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """KL autoencoder (first stage). `ch_mult` has one entry per resolution level."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 3
    embed_dim: int = 3
    scale_factor: float = 0.058
    # Per-channel mean of the posterior, subtracted before scaling; () for none, as in LDM. Models we train
    # centre their latents: with a non-zero terminal SNR an expert reads the colour mean from x_T, and a
    # mean far from zero is then lost when sampling starts from N(0, 1) (see with_latent_normalisation).
    latent_shift: tuple[float, ...] = ()

    def __post_init__(self):
        if self.latent_shift and len(self.latent_shift) != self.embed_dim:
            raise ValueError(
                f"AutoencoderConfig: latent_shift has {len(self.latent_shift)} entries; it needs one per "
                f"latent channel (embed_dim {self.embed_dim}) or none"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """LDM "openaimodel" UNet with spatial transformers (experts and dynamic diffusers).

    `attention_resolutions` are downsample rates (1 = full latent resolution), as in LDM.
    Give `num_heads` (head width = channels // heads) or `num_head_channels`, not both.
    """

    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 5)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 4, 2)
    num_heads: int = 32
    num_head_channels: int = -1
    transformer_depth: int = 1
    context_dim: int = 640

    def __post_init__(self):
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError("UNetConfig: set exactly one of num_heads and num_head_channels")

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head width) of a transformer over `channels` channels."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """BERT-style pre-LN transformer over WordPiece ids (x-transformers `Encoder`)."""

    width: int = 640
    depth: int = 32
    heads: int = 8
    head_dim: int = 64
    vocab_size: int = 30522
    max_len: int = 77


@dataclasses.dataclass(frozen=True)
class MaskEncoderConfig:
    """Linear map of each class's flattened binary map (19 tokens of 32*32) to the context width."""

    num_classes: int = 19
    mask_size: int = 32
    context_dim: int = 640


@dataclasses.dataclass(frozen=True)
class ScribbleEncoderConfig:
    """Linear map of flattened line-drawing maps to the context width, like the mask's encoder.

    The tokens are one binary line drawing at `scribble_size`, thickened to each stroke width of
    `stroke_widths` (one token per width): thin strokes place edges exactly, thick ones still overlap a
    slightly misplaced hand-drawn line.
    """

    scribble_size: int = 32
    stroke_widths: tuple[int, ...] = (1, 3, 5)
    context_dim: int = 640

    def __post_init__(self):
        if not self.stroke_widths or any(w < 1 or w % 2 == 0 for w in self.stroke_widths):
            raise ValueError(
                f"ScribbleEncoderConfig: stroke_widths {self.stroke_widths} must be odd positive widths "
                "(a stroke grows by the same amount on both sides)"
            )


# The encoder config of each modality kind, by kind: what a checkpoint's JSON "encoder" is read as.
# Everything else about a kind (its modules, inputs, batch field, ...) is in cdiff_jax.modalities.
ENCODER_CONFIGS = {"text": TextEncoderConfig, "mask": MaskEncoderConfig, "scribble": ScribbleEncoderConfig}


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """LDM "linear" DDPM schedule: betas = linspace(sqrt(start), sqrt(end), T) ** 2."""

    timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0195

    def __post_init__(self):
        if not (isinstance(self.timesteps, int) and self.timesteps >= 2):
            raise ValueError(f"ScheduleConfig: timesteps must be an integer of at least 2, got {self.timesteps!r}")
        if not 0 < self.linear_start <= self.linear_end < 1:
            raise ValueError(
                f"ScheduleConfig: needs 0 < linear_start <= linear_end < 1, got {self.linear_start!r} "
                f"and {self.linear_end!r}"
            )


@dataclasses.dataclass(frozen=True)
class ModalityConfig:
    """One condition modality: its encoder, its expert UNet and (for collaboration) its diffuser."""

    kind: str  # a key of ENCODER_CONFIGS
    encoder: TextEncoderConfig | MaskEncoderConfig | ScribbleEncoderConfig
    expert: UNetConfig
    diffuser: UNetConfig | None = None

    def __post_init__(self):
        expected = encoder_config_class(self.kind)
        if not isinstance(self.encoder, expected):
            raise ValueError(
                f"ModalityConfig: kind {self.kind!r} needs a {expected.__name__}, got a {type(self.encoder).__name__}"
            )


def encoder_config_class(kind: str) -> type:
    """The encoder config class of a modality kind; an unknown kind is a one-line error listing the kinds."""
    if kind not in ENCODER_CONFIGS:
        raise ValueError(f"unknown modality kind {kind!r}; expected one of: {', '.join(ENCODER_CONFIGS)}")
    return ENCODER_CONFIGS[kind]


@dataclasses.dataclass(frozen=True)
class SystemConfig:
    """A latent diffusion system: one autoencoder, a schedule and one or more modalities.

    One modality without a diffuser is a uni-modal LDM; two or more with diffusers is the
    collaborative model. Modality order is the order of the softmax over influence maps.
    """

    autoencoder: AutoencoderConfig
    modalities: dict[str, ModalityConfig]
    schedule: ScheduleConfig = ScheduleConfig()
    latent_size: int = 64

    def __hash__(self) -> int:  # the modality dict is not hashable; jit needs hashable static config
        return hash(self.to_json())

    @property
    def is_collaborative(self) -> bool:
        return all(m.diffuser is not None for m in self.modalities.values())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SystemConfig:
        def modalities(raw):
            if not isinstance(raw, dict):
                raise ValueError("modalities: expected an object of named modalities")
            return {name: _modality_from_dict(m) for name, m in raw.items()}

        return _from_dict(
            cls,
            json.loads(text),
            autoencoder=lambda raw: _from_dict(AutoencoderConfig, raw),
            modalities=modalities,
            schedule=lambda raw: _from_dict(ScheduleConfig, raw),
        )


def _from_dict(cls, raw: dict[str, Any], **parsers):
    """Build a config dataclass from JSON (lists back into tuples; `parsers` build the nested fields):
    unknown or missing keys and values of the wrong type are a ValueError naming them, never a config
    that breaks later."""
    if not isinstance(raw, dict):
        raise ValueError(f"{cls.__name__}: expected an object of fields, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{cls.__name__}: missing field(s) {missing}")
    config = cls(**{k: parsers[k](v) if k in parsers else _tuples(v) for k, v in raw.items()})
    check_field_types(config)
    return config


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def check_field_types(config) -> None:
    """ValueError naming the first field of a config dataclass whose value does not have its annotated type."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not has_type(value, hints[field.name]):
            raise ValueError(f"{field.name}={value!r}: expected {type_name(hints[field.name])}")


def has_type(value, hint) -> bool:
    """isinstance for the annotations configs use: int, float (finite), str, bool, dataclasses, X | None,
    tuple[X, ...], tuple[X, Y] and dict[str, X]."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(has_type(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, dict) and all(has_type(k, args[0]) and has_type(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, hint)


def type_name(hint) -> str:
    """What `has_type` asks for, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple whose entries are each {type_name(args[0])}"
        return f"a tuple of {len(args)} ({', '.join(type_name(a) for a in args)})"
    if origin is dict:
        return f"a mapping of names to {type_name(args[1])}"
    names = {type(None): "None", int: "an integer", float: "a finite number", str: "a string", bool: "True or False"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _modality_from_dict(raw: dict[str, Any]) -> ModalityConfig:
    kind = raw.get("kind") if isinstance(raw, dict) else None
    return _from_dict(
        ModalityConfig,
        raw,
        encoder=lambda r: _from_dict(encoder_config_class(kind), r),
        expert=lambda r: _from_dict(UNetConfig, r),
        diffuser=lambda r: _from_dict(UNetConfig, r) if r else None,
    )


def load_config(spec: str):
    """A config from `FILE.py[:ARG]` (calls its `get_config(ARG)`).

    A bare `NAME.py[:ARG]` that is not a file is looked up among the shipped configs, so
    `released.py:512_codiff` works from any working directory. Official YAMLs only describe
    checkpoints to convert, so they are the converter's input, not a config of ours.
    """
    import importlib.util
    import pathlib

    path_text, _, arg = spec.partition(":")
    path = pathlib.Path(path_text)
    if path.suffix in (".yaml", ".yml"):
        raise ValueError(
            f"config {spec!r}: official YAMLs describe checkpoints to convert; run "
            f"`python -m cdiff_jax.convert CKPT DIR --config {path_text}` and use DIR, or pass one of our "
            "FILE.py[:ARG] configs (e.g. released.py:512_codiff)"
        )
    if path.suffix != ".py":
        raise ValueError(f"config {spec!r}: expected FILE.py[:ARG], e.g. released.py:512_codiff")
    if not path.is_file():
        from importlib import resources

        shipped = pathlib.Path(str(resources.files("cdiff_jax.configs") / path.name))
        if not shipped.is_file():
            raise FileNotFoundError(f"config file {path} not found (nor among the shipped configs)")
        path = shipped
    module_spec = importlib.util.spec_from_file_location(f"_cdiff_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(arg) if arg else module.get_config()
    except (KeyError, ValueError, TypeError) as err:
        usage = " ".join((module.get_config.__doc__ or "").strip().split("\n\n")[0].split())  # its first paragraph
        hint = f" ({usage})" if usage else ""
        reason = f"unknown name {err.args[0]!r}" if isinstance(err, KeyError) and err.args else err
        raise ValueError(f"config {spec!r}: {reason}{hint}") from None


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """StyleGAN2 generator (config-f, 'skip' architecture), in the terms of stylegan2-ada-pytorch's
    `Generator` constructor, so a network pickle's recorded kwargs translate field for field.

    `mapping_layer_features` / `embed_features` of None mean w_dim, as in the official code. The
    resample filter is the FIR kernel of every x2 upsampling (outer product of itself, normalised).
    """

    z_dim: int = 512
    c_dim: int = 0
    w_dim: int = 512
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    mapping_layer_features: int | None = None
    embed_features: int | None = None
    w_avg_beta: float = 0.995
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    architecture: str = "skip"
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)

    def __post_init__(self):
        log2 = self.img_resolution.bit_length() - 1
        if self.img_resolution < 4 or self.img_resolution != 2**log2:
            raise ValueError(f"StyleGAN2Config: img_resolution {self.img_resolution} must be a power of two >= 4")
        if self.architecture != "skip":
            raise ValueError(
                f"StyleGAN2Config: architecture {self.architecture!r} is not implemented; only 'skip' "
                "(config-f, every released StyleGAN2/ADA generator) is"
            )
        if self.mapping_layers < 1:
            raise ValueError("StyleGAN2Config: mapping_layers must be at least 1")

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        return tuple(2**i for i in range(2, self.img_resolution.bit_length()))

    def channels(self, resolution: int) -> int:
        return min(self.channel_base // resolution, self.channel_max)

    @property
    def num_ws(self) -> int:
        """W+ rows: one per conv layer, plus the last block's toRGB (earlier toRGBs share the next conv0's row)."""
        return 2 * len(self.block_resolutions)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StyleGAN2Config:
        return _from_dict(cls, json.loads(text))


@dataclasses.dataclass(frozen=True)
class StyleGAN2DiscriminatorConfig:
    """StyleGAN2 discriminator ('resnet' architecture), in the terms of stylegan2-ada-pytorch's
    `Discriminator` constructor. `cmap_dim` None means the 4x4 block's width (conditional only)."""

    c_dim: int = 0
    img_resolution: int = 1024
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    cmap_dim: int | None = None
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    architecture: str = "resnet"
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)

    def __post_init__(self):
        log2 = self.img_resolution.bit_length() - 1
        if self.img_resolution < 8 or self.img_resolution != 2**log2:
            raise ValueError(
                f"StyleGAN2DiscriminatorConfig: img_resolution {self.img_resolution} must be a power of two >= 8"
            )
        if self.architecture != "resnet":
            raise ValueError(
                f"StyleGAN2DiscriminatorConfig: architecture {self.architecture!r} is not implemented; "
                "only 'resnet' (config-f, every released StyleGAN2/ADA discriminator) is"
            )

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        """From the image resolution down to 8; the epilogue runs at 4."""
        return tuple(2**i for i in range(self.img_resolution.bit_length() - 1, 2, -1))

    def channels(self, resolution: int) -> int:
        return min(self.channel_base // resolution, self.channel_max)

    @property
    def projection_dim(self) -> int:
        """Width of the label embedding the output is projected on (0: unconditional)."""
        if not self.c_dim:
            return 0
        return self.channels(4) if self.cmap_dim is None else self.cmap_dim

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StyleGAN2DiscriminatorConfig:
        return _from_dict(cls, json.loads(text))


@dataclasses.dataclass(frozen=True)
class SuperresolutionSpec:
    """One of EG3D's super-resolution modules: two StyleGAN2 blocks after the neural rendering.

    `blocks` is (upsamples, out_channels) per block; the rendered features are resized to
    `input_resolution` when they differ (`resize_only_up`: only when smaller, as the 4x module does).
    """

    img_resolution: int
    input_resolution: int
    blocks: tuple[tuple[bool, int], tuple[bool, int]]
    resize_only_up: bool = False
    antialias_option: bool = True  # False: the legacy module that always resizes without antialiasing


NO_SUPERRESOLUTION = "none"
EG3D_SUPERRESOLUTION = {  # training.superresolution.<name> of the EG3D release
    "SuperresolutionHybrid2X": SuperresolutionSpec(128, 64, ((False, 128), (True, 64))),
    "SuperresolutionHybrid4X": SuperresolutionSpec(256, 128, ((False, 128), (True, 64)), resize_only_up=True),
    "SuperresolutionHybrid8X": SuperresolutionSpec(512, 128, ((True, 128), (True, 64))),
    "SuperresolutionHybrid8XDC": SuperresolutionSpec(512, 128, ((True, 256), (True, 128))),
    "SuperresolutionHybridDeepfp32": SuperresolutionSpec(
        256, 128, ((False, 128), (True, 64)), resize_only_up=True, antialias_option=False
    ),
}


@dataclasses.dataclass(frozen=True)
class EG3DConfig:
    """EG3D's tri-plane generator in the terms of `TriPlaneGenerator`'s constructor, its
    `rendering_kwargs` and the pickled `neural_rendering_resolution` attribute.

    The backbone is a StyleGAN2 synthesis at 256 with 3 x 32 output channels (the tri-planes); the
    decoder (32 -> 64 -> 1 + 32) and the super-resolution blocks (w_dim 512) have the release's fixed
    sizes. Rendering settings are the FFHQ ones by default; a converted pickle brings its own.
    """

    z_dim: int = 512
    c_dim: int = 25
    w_dim: int = 512
    img_resolution: int = 512
    mapping_layers: int = 2
    mapping_layer_features: int | None = None
    embed_features: int | None = None
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.998
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    superresolution: str = "SuperresolutionHybrid8XDC"  # or "none": the neural rendering is the image (toy models)
    sr_conv_clamp: float | None = 256.0  # 256 whenever the release's sr_num_fp16_res > 0, as it always is
    sr_antialias: bool = True
    superresolution_noise_mode: str = "none"  # "none" (every release) or "const"
    neural_rendering_resolution: int = 64
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    disparity_space_sampling: bool = False
    white_back: bool = False
    c_scale: float = 1.0
    c_gen_conditioning_zero: bool = False
    decoder_lr_multiplier: float = 1.0
    avg_camera_radius: float = 2.7
    avg_camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)
    fov_degrees: float = 18.837  # the field of view of the FFHQ cameras (the sampling scripts' value)
    plane_resolution: int = 256  # the release's backbone size; smaller for toy models
    plane_channels: int = 32

    plane_count = 3
    decoder_hidden = 64

    def __post_init__(self):
        if self.superresolution == NO_SUPERRESOLUTION:
            if self.img_resolution != self.neural_rendering_resolution:
                raise ValueError(
                    f"EG3DConfig: without super-resolution the image is the neural rendering: set "
                    f"img_resolution = neural_rendering_resolution ({self.neural_rendering_resolution})"
                )
        elif self.superresolution not in EG3D_SUPERRESOLUTION:
            raise ValueError(
                f"EG3DConfig: super-resolution module {self.superresolution!r} is not supported; "
                f"supported: {sorted(EG3D_SUPERRESOLUTION)} or {NO_SUPERRESOLUTION!r}"
            )
        elif self.sr.img_resolution != self.img_resolution:
            raise ValueError(
                f"EG3DConfig: {self.superresolution} renders {self.sr.img_resolution}x"
                f"{self.sr.img_resolution}, not img_resolution {self.img_resolution}"
            )
        if self.c_dim != 25:
            raise ValueError(f"EG3DConfig: c_dim {self.c_dim}; EG3D's camera label has 25 numbers")
        if self.depth_resolution < 2 or self.depth_resolution_importance < 0:
            raise ValueError(
                "EG3DConfig: depth_resolution must be at least 2 and depth_resolution_importance at least 0"
            )
        if not 0 < self.ray_start < self.ray_end:
            raise ValueError(
                f"EG3DConfig: rays from {self.ray_start} to {self.ray_end}; need 0 < start < end "
                "(the 'auto' box bounds of the ShapeNet models are not supported)"
            )
        if self.neural_rendering_resolution < 1:
            raise ValueError("EG3DConfig: neural_rendering_resolution must be positive")
        if self.superresolution_noise_mode not in ("none", "const"):
            raise ValueError(
                f"EG3DConfig: superresolution_noise_mode {self.superresolution_noise_mode!r}; choose 'none' or 'const'"
            )

    @property
    def sr(self) -> SuperresolutionSpec | None:
        return EG3D_SUPERRESOLUTION.get(self.superresolution)

    @property
    def backbone(self) -> StyleGAN2Config:
        """The StyleGAN2 generator whose 96-channel 256x256 image is the three feature planes."""
        return StyleGAN2Config(
            z_dim=self.z_dim,
            c_dim=self.c_dim,
            w_dim=self.w_dim,
            img_resolution=self.plane_resolution,
            img_channels=self.plane_count * self.plane_channels,
            mapping_layers=self.mapping_layers,
            mapping_lr_multiplier=self.mapping_lr_multiplier,
            mapping_layer_features=self.mapping_layer_features,
            embed_features=self.embed_features,
            w_avg_beta=self.w_avg_beta,
            channel_base=self.channel_base,
            channel_max=self.channel_max,
            conv_clamp=self.conv_clamp,
        )

    @property
    def superresolution_blocks(self) -> StyleGAN2Config:
        """The StyleGAN2 settings of the super-resolution blocks (RGB out, their own clamp)."""
        return StyleGAN2Config(
            z_dim=0, w_dim=self.w_dim, img_resolution=self.img_resolution, img_channels=3, conv_clamp=self.sr_conv_clamp
        )

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EG3DConfig:
        return _from_dict(cls, json.loads(text))


@dataclasses.dataclass(frozen=True)
class DDGIHeadsConfig:
    """DDGI's two trained networks: M maps the UNet's middle block to W+ codes, T (AbSMNet) modulates them.

    The paper publishes neither network's layer counts or widths; every field here is ours. Feature
    shapes are (size, channels) of square NHWC maps: `middle` is h_t, `levels` the tapped decoder layers
    (f_t and a_t), largest last or in any order. M follows pSp's map2style heads (one per W+ entry,
    log2(size) stride-2 3x3 convs then a linear layer) with the ReLU of the paper's figure.
    """

    num_ws: int  # W+ entries of the GAN: 2 * log2(resolution) - 2
    w_dim: int
    middle: tuple[int, int]  # (size, channels) of h_t
    levels: tuple[tuple[int, int], ...]  # (size, channels) of each tapped decoder layer
    mapping_channels: int = 512  # width of each map2style head's convolutions
    modulation_channels: int = 256  # width of AbSMNet's convolutions
    attention_gating: bool = True  # False: the local stream is F and the global F-bar (the ablation)
    experts: tuple[str, ...] = ()  # the modalities whose UNets are read, in the order their maps are concatenated

    def __post_init__(self):
        sizes = [self.middle[0]] + [size for size, _ in self.levels]
        if not self.levels:
            raise ValueError("DDGIHeadsConfig: AbSMNet needs at least one tapped decoder level")
        if any(size < 1 or size & (size - 1) for size in sizes):
            raise ValueError(f"DDGIHeadsConfig: feature sizes must be powers of two, got {sizes}")
        if self.num_ws < 1 or self.w_dim < 1:
            raise ValueError(f"DDGIHeadsConfig: num_ws and w_dim must be positive, got {self.num_ws}, {self.w_dim}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DDGIHeadsConfig:
        return _from_dict(cls, json.loads(text))

    @property
    def modulation_size(self) -> int:
        """The resolution AbSMNet works at: the largest tapped level."""
        return max(size for size, _ in self.levels)

"""A tiny system (32x32 images, 16x16 latents) for tests and smoke runs of training.

`get_config()` is the collaborative system of text and mask; `get_config("three")` adds a scribble;
`get_config(KIND)` ("text", "mask" or "scribble") keeps one modality without a diffuser (what the
expert stage trains).
"""

from cdiff_jax.config import (
    AutoencoderConfig,
    MaskEncoderConfig,
    ModalityConfig,
    ScribbleEncoderConfig,
    SystemConfig,
    TextEncoderConfig,
    UNetConfig,
)

EXPERT = UNetConfig(
    model_channels=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(1,), num_heads=2, context_dim=16
)
DIFFUSER = UNetConfig(
    out_channels=1,
    model_channels=32,
    channel_mult=(1,),
    num_res_blocks=1,
    attention_resolutions=(),
    num_heads=2,
    context_dim=16,
)
MODALITIES = {
    "mask": ModalityConfig("mask", MaskEncoderConfig(context_dim=16), EXPERT, DIFFUSER),
    "text": ModalityConfig("text", TextEncoderConfig(width=16, depth=1), EXPERT, DIFFUSER),
    "scribble": ModalityConfig("scribble", ScribbleEncoderConfig(context_dim=16), EXPERT, DIFFUSER),
}


def get_config(arg: str = "") -> SystemConfig:
    """The tiny system: "" text and mask, "three" text, mask and scribble, a kind: that expert alone."""
    if arg in ("", "three"):
        names = ("mask", "text") + (("scribble",) if arg else ())
        modalities = {name: MODALITIES[name] for name in names}
    else:
        only = MODALITIES[arg]
        modalities = {arg: ModalityConfig(only.kind, only.encoder, only.expert, None)}
    return SystemConfig(
        autoencoder=AutoencoderConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, resolution=32, scale_factor=0.5),
        modalities=modalities,
        latent_size=16,
    )

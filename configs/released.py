"""The architectures of the released Collaborative Diffusion checkpoints (256 and 512).

These are the numbers of the official YAML configs; both resolutions share the UNets and
differ only in the autoencoder (f4 at 256, f8 at 512) and its latent scale factor.

Convert a released checkpoint (the type and resolution are detected from its keys):
    python -m cdiff_jax.convert pretrained/512_codiff_mask_text.ckpt checkpoints/512_codiff
or name the config explicitly:
    python -m cdiff_jax.convert SRC DST --config configs/released.py:512_codiff

`get_config("<resolution>_<kind>")` with kind one of vae, mask, text, codiff.
"""

from cdiff_jax.config import (
    AutoencoderConfig,
    MaskEncoderConfig,
    ModalityConfig,
    SystemConfig,
    TextEncoderConfig,
    UNetConfig,
)

AUTOENCODERS = {
    256: AutoencoderConfig(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, resolution=256, scale_factor=0.058),
    512: AutoencoderConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, resolution=512, scale_factor=0.141),
}
EXPERT = UNetConfig(
    model_channels=192,
    channel_mult=(1, 2, 3, 5),
    num_res_blocks=2,
    attention_resolutions=(8, 4, 2),
    num_heads=32,
    context_dim=640,
)
DIFFUSER = UNetConfig(
    out_channels=1,
    model_channels=32,
    channel_mult=(1, 2, 3, 5),
    num_res_blocks=2,
    attention_resolutions=(8, 4, 2),
    num_heads=32,
    context_dim=640,
)
TEXT_ENCODER = TextEncoderConfig(width=640, depth=32)
MASK_ENCODER = MaskEncoderConfig(mask_size=32, context_dim=640)
KINDS = ("vae", "mask", "text", "codiff")


def get_config(arg: str = "512_codiff") -> SystemConfig:
    resolution, _, kind = arg.partition("_")
    if int(resolution) not in AUTOENCODERS or kind not in KINDS:
        raise ValueError(f"released config {arg!r}: expected <256|512>_<{'|'.join(KINDS)}>")
    diffuser = DIFFUSER if kind == "codiff" else None
    modalities = {
        "mask": ModalityConfig("mask", MASK_ENCODER, EXPERT, diffuser),
        "text": ModalityConfig("text", TEXT_ENCODER, EXPERT, diffuser),
    }
    chosen = {"vae": [], "mask": ["mask"], "text": ["text"], "codiff": ["mask", "text"]}[kind]
    return SystemConfig(
        autoencoder=AUTOENCODERS[int(resolution)],
        modalities={name: modalities[name] for name in chosen},
        latent_size=64,
    )

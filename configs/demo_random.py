"""A tiny collaborative system with RANDOM weights: exercises the whole sampling path in seconds.

No trained weights are shipped yet, so `python sample.py` with no checkpoint samples from this
model; its pictures are structured noise, not faces. Its influence maps still show how the
two modalities split each pixel.

    python sample.py                      # uses this config with seed-0 random weights
"""

from cdiff_jax.config import (
    AutoencoderConfig,
    MaskEncoderConfig,
    ModalityConfig,
    SystemConfig,
    TextEncoderConfig,
    UNetConfig,
)


def get_config(arg: str = "") -> SystemConfig:
    expert = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                        num_heads=4, context_dim=64)
    diffuser = UNetConfig(out_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(), num_heads=2, context_dim=64)
    return SystemConfig(
        autoencoder=AutoencoderConfig(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, resolution=64, scale_factor=0.058),
        modalities={
            "mask": ModalityConfig("mask", MaskEncoderConfig(context_dim=64), expert, diffuser),
            "text": ModalityConfig("text", TextEncoderConfig(width=64, depth=2), expert, diffuser),
        },
        latent_size=16,
    )

"""The toy StyleGAN2 that DDGI maps into: 64x64 toy faces, 10 W+ entries, small enough to train on a CPU.

Widths min(channel_base / resolution, channel_max); the mapping has the two layers of stylegan2-ada-pytorch's
"auto" configuration (for small datasets). Trained by `configs/train_demo.py:gan`.
"""

from cdiff_jax.config import StyleGAN2Config


def get_config(arg: str = "") -> StyleGAN2Config:
    return StyleGAN2Config(
        z_dim=128, w_dim=128, img_resolution=64, mapping_layers=2, channel_base=1024, channel_max=128
    )

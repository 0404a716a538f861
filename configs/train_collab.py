"""The paper's training stage, the dynamic diffusers with the experts frozen: train_released.py's `collab_<size>` (the
official recipe and its numbers are documented there), under the name the README's commands use.

Convert the released uni-modal checkpoints first, then:

    python train.py --config configs/train_collab.py:512 --workdir runs/collab_512 \
        --set data_dir=data/tfds --set "init_from=(('autoencoder','ckpt/512_text'),('modalities.text','ckpt/512_text'),
            ('modalities.mask','ckpt/512_mask'))"
"""

from cdiff_jax.configs import train_released
from cdiff_jax.train.config import TrainConfig


def get_config(arg: str = "512") -> TrainConfig:
    """`arg`: 256 or 512."""
    return train_released.get_config(f"collab_{arg}")

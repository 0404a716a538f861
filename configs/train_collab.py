"""The paper's training stage: the dynamic diffusers, with the released experts frozen.

Convert the released uni-modal checkpoints first, then:

    python train.py --config configs/train_collab.py:512 --workdir runs/collab_512 \
        --set data_dir=data/tfds --set "init_from=(('autoencoder','ckpt/512_text'),('modalities.text','ckpt/512_text'),
            ('modalities.mask','ckpt/512_mask'))"

Reference hyperparameters: AdamW (0.9, 0.999, eps 1e-8, weight decay 0.01), lr 2e-6 x global
batch (6.4e-5 at the reference's 4 GPUs x 8), fp32, no schedule, no EMA.
"""

from cdiff_jax.train.config import TrainConfig


def get_config(arg: str = "512") -> TrainConfig:
    resolution = int(arg)
    return TrainConfig(stage="collab", system=f"released.py:{resolution}_codiff", resolution=resolution,
                       global_batch=32, base_learning_rate=2e-6, steps=100_000)

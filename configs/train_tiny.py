"""Training the tiny system for a few steps on a tiny dataset: for tests and smoke runs.

python train.py --config configs/train_tiny.py --workdir runs/tiny --set data_dir=PATH
python train.py --config configs/train_tiny.py:expert_text --workdir runs/tiny_text --set data_dir=PATH
python train.py --config configs/train_tiny.py:autoencoder --workdir runs/tiny_vae --set data_dir=PATH
"""

from cdiff_jax.train.config import TrainConfig

STAGES = ("collab", "autoencoder", "expert_text", "expert_mask", "expert_scribble")


def get_config(arg: str = "collab") -> TrainConfig:
    """`arg`: collab, autoencoder, expert_text, expert_mask or expert_scribble."""
    if arg not in STAGES:
        raise ValueError(f"unknown stage {arg!r}")
    common = dict(
        resolution=32,
        test_size=2,
        global_batch=8,
        base_learning_rate=1e-4,
        steps=6,
        log_every=1,
        checkpoint_every=2,
        val_every=3,
        val_batches=1,
        sample_every=6,
        sample_count=2,
        sample_steps=2,
    )
    if arg == "collab":
        return TrainConfig(stage="collab", system="tiny_system.py", **common)
    if arg == "autoencoder":  # the discriminator switches on half way, small to keep the test fast
        return TrainConfig(
            stage="autoencoder",
            system="tiny_system.py:text",
            perceptual_weight=0.0,
            disc_start=3,
            disc_filters=8,
            disc_layers=2,
            **common,
        )
    kind = arg.removeprefix("expert_")
    return TrainConfig(stage="expert", modality=kind, system=f"tiny_system.py:{kind}", condition_dropout=0.1, **common)

"""What a training run does: one frozen dataclass, built by a Python file under configs/."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # What to train: "collab" (the dynamic diffusers, everything else frozen: the paper's stage),
    # "expert" (one modality's UNet and condition encoder, the autoencoder frozen) or
    # "autoencoder" (the KL autoencoder, with LDM's reconstruction + KL + patch-GAN objective).
    stage: str = "collab"
    modality: str | None = None  # the expert stage's modality
    # The system to start from: "FILE.py:ARG" builds it from a config with fresh weights; then
    # `init_from` copies parameter subtrees from our checkpoints, e.g.
    # {"autoencoder": "ckpt/512_text", "modalities.text": "ckpt/512_text", "modalities.mask": "ckpt/512_mask"}.
    system: str = "released.py:512_codiff"
    init_from: tuple[tuple[str, str], ...] = ()
    seed: int = 0

    # Data: a prepared CelebAMultiModal TFDS directory (cdiff_jax.data.celeba_multimodal).
    data_dir: str = "data/tfds"
    resolution: int = 512
    test_size: int = 3000

    # Optimisation, as the reference: AdamW, lr = base_learning_rate x global batch, no schedule.
    global_batch: int = 32
    base_learning_rate: float = 2e-6
    weight_decay: float = 0.01
    steps: int = 100_000
    steps_per_call: int = 1  # optimizer steps per device call (one lax.scan)
    condition_dropout: float = 0.0  # expert stage: enables classifier-free guidance later
    # > 0 keeps an exponential moving average of the trained parameters (LDM: 0.9999, with its
    # warm-up), which validation, sample grids and the exported system then use.
    ema_decay: float = 0.0

    # The autoencoder stage (LDM's defaults; its optimizers are Adam with betas 0.5/0.9). The
    # perceptual term needs LPIPS weights from a file (an LDM autoencoder checkpoint holds them);
    # set perceptual_weight=0 to train without it.
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0
    perceptual_weights: str | None = None
    disc_start: int = 50_001  # optimizer step at which the discriminator's terms switch on
    disc_weight: float = 0.5
    disc_filters: int = 64
    disc_layers: int = 3
    fsdp_min_size: int | None = None  # shard parameters with at least this many elements; None: replicate

    # Housekeeping (in optimizer steps).
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    val_every: int = 1000
    val_batches: int = 8
    sample_every: int = 5000
    sample_count: int = 4
    sample_steps: int = 50

    @property
    def learning_rate(self) -> float:
        return self.base_learning_rate * self.global_batch

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

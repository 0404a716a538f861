"""Retraining every released stage at 256 and 512 with the official hyperparameters.

`get_config("<stage>_<size>")`: stage autoencoder, expert_text, expert_mask or collab; size 256 or 512. Each stage
starts from what the earlier ones exported (`init_from`, under runs/released/<size>/), so run them in order (the two
experts need only the autoencoder). At 512 (for 256 write 256 for every 512):

    python -m cdiff_jax.data.celeba_multimodal datasets/celebahq data/tfds --resolution 512
    python train.py --config configs/train_released.py:autoencoder_512 --workdir runs/released/512/autoencoder \
        --set perceptual_weights=pretrained/512_vae.ckpt
    python train.py --config configs/train_released.py:expert_text_512 --workdir runs/released/512/expert_text
    python train.py --config configs/train_released.py:expert_mask_512 --workdir runs/released/512/expert_mask
    python train.py --config configs/train_released.py:collab_512 --workdir runs/released/512/collab

The autoencoder's perceptual term reads LPIPS weights from a file (a released or any LDM autoencoder checkpoint
holds them). To build on converted released checkpoints instead of your own runs, override `init_from`, e.g. for
collab_512 --set "init_from=(('autoencoder','ckpt/512_text'),('modalities.text','ckpt/512_text'),
('modalities.mask','ckpt/512_mask'))", for an expert --set "init_from=(('autoencoder','ckpt/512_vae'),)".

The numbers are those of the official repository (ziqihuangg/Collaborative-Diffusion). Its README trains every
stage with `main.py -t --gpus 0,1,2,3` (4 GPUs, DDP), and main.py's default --scale_lr sets the learning rate to
accumulate_grad_batches x GPUs x batch_size x base_learning_rate: our base_learning_rate x global_batch, with
global_batch = 4 x batch_size x accumulate_grad_batches (data.params.batch_size, lightning.trainer):

    recipe           official YAML                      batch/GPU  accumulate  global batch  base lr  lr
    autoencoder_256  configs/256_vae.yaml               8          2           64            4.5e-6   2.88e-4
    autoencoder_512  configs/512_vae.yaml               2          2           16            4.5e-6   7.2e-5
    expert_text_256  configs/256_text.yaml              8          1           32            2e-6     6.4e-5
    expert_text_512  configs/512_text.yaml              8          1           32            2e-6     6.4e-5
    expert_mask_256  configs/256_mask.yaml              8          1           32            2e-6     6.4e-5
    expert_mask_512  configs/512_mask.yaml              8          1           32            1e-6     3.2e-5
    collab_256       configs/256_codiff_mask_text.yaml  8          1           32            2e-6     6.4e-5
    collab_512       configs/512_codiff_mask_text.yaml  8          1           32            2e-6     6.4e-5

- Autoencoder (*_vae.yaml; ldm/modules/losses/contperceptual.py, ldm/models/autoencoder.py): LPIPSWithDiscriminator
  with disc_start 50001 (Lightning's global_step, which counts optimizer steps, after accumulation), kl_weight 1e-6,
  disc_weight 0.5 and its defaults (perceptual weight 1, a 3-layer patch discriminator, hinge loss); Adam with
  betas (0.5, 0.9) for both networks. Lightning accumulated 2 batches per step, and so does the recipe
  (gradient_accumulation=2: each micro-batch's adaptive GAN weight its own, the discriminator's first micro-batch
  against the autoencoder before its update, as Lightning runs it). One difference stays: DDP computes the adaptive
  weight on each GPU's batch (2 or 8 images), the recipe on each micro-batch of the global batch (all 4 GPUs' share).
- Experts and dynamic diffusers (*_text.yaml, *_mask.yaml, *_codiff_mask_text.yaml; ldm/models/diffusion/ddpm.py,
  ddpm_compose.py): AdamW with torch's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01), no schedule,
  use_ema False (ema_decay 0), no condition dropout (so the released experts have no unconditional mode); the experts
  train the UNet and the condition encoder (cond_stage_trainable), the collab stage the dynamic diffusers only. Their
  UNets recompute activations in the backward pass (use_checkpoint: true), a memory setting that changes no number:
  `remat` here, left to the machine.
- Data (ldm/data/celebahq.py): the last 3000 caption keys are the test split (test_dataset_size). Training images go
  through DalleTransformerPreprocessor: resized to a side drawn from [size, min(side, 9/8 size)] and cropped back to
  size at a random place, the mask untouched. Every YAML reads images of its training size (the 256 ones
  datasets/image_256_downsampled_from_hq_1024), which that transform returns unchanged, so crop_zoom stays off;
  --set crop_zoom=1.125 gives the crops it takes from larger images (e.g. the released 512 images read at 256).
- Steps: the YAMLs set no limit (Lightning 1.4's default of 1000 epochs) and the repository does not record how long
  the released checkpoints trained; 100k is ours (--set steps=N).
"""

from cdiff_jax.train.config import TrainConfig

GPUS = 4
RUNS = "runs/released"
STEPS = 100_000
# recipe: (batch per GPU, accumulate_grad_batches, base_learning_rate) of its official YAML
OFFICIAL = {
    "autoencoder_256": (8, 2, 4.5e-6),
    "autoencoder_512": (2, 2, 4.5e-6),
    "expert_text_256": (8, 1, 2e-6),
    "expert_text_512": (8, 1, 2e-6),
    "expert_mask_256": (8, 1, 2e-6),
    "expert_mask_512": (8, 1, 1e-6),
    "collab_256": (8, 1, 2e-6),
    "collab_512": (8, 1, 2e-6),
}


def get_config(arg: str = "collab_512") -> TrainConfig:
    """`arg`: <stage>_<size>, stage autoencoder, expert_text, expert_mask or collab, size 256 or 512."""
    batch, accumulate, base_learning_rate = OFFICIAL[arg]
    stage, _, size = arg.rpartition("_")
    runs = f"{RUNS}/{size}"
    common = dict(
        resolution=int(size),
        global_batch=GPUS * batch * accumulate,
        base_learning_rate=base_learning_rate,
        steps=STEPS,
        test_size=3000,
        ema_decay=0.0,
        crop_zoom=None,
    )
    autoencoder = ("autoencoder", f"{runs}/autoencoder/system")
    if stage == "autoencoder":
        return TrainConfig(
            stage="autoencoder",
            system=f"released.py:{size}_vae",
            kl_weight=1e-6,
            disc_start=50_001,
            disc_weight=0.5,
            perceptual_weight=1.0,
            disc_layers=3,
            gradient_accumulation=accumulate,
            **common,
        )
    if stage == "collab":
        return TrainConfig(
            stage="collab",
            system=f"released.py:{size}_codiff",
            **common,
            init_from=(
                autoencoder,
                ("modalities.text", f"{runs}/expert_text/system"),
                ("modalities.mask", f"{runs}/expert_mask/system"),
            ),
        )
    kind = stage.removeprefix("expert_")
    return TrainConfig(
        stage="expert",
        modality=kind,
        system=f"released.py:{size}_{kind}",
        init_from=(autoencoder,),
        condition_dropout=0.0,
        **common,
    )

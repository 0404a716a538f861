"""What a training run does: one frozen dataclass, built by a Python file under configs/."""

from __future__ import annotations

import dataclasses
import pathlib

from cdiff_jax.config import check_field_types
from cdiff_jax.nn.remat import check_policy

STAGES = ("collab", "expert", "autoencoder", "gan", "triplane", "ddgi_mapping", "ddgi_modulation")
FRESH_TOY_FACES = "fresh-toy-faces:"  # the gan stage's data_dir prefix for endless procedural toy faces
TOY_3D_WORLD = "toy-3d-world:"  # the triplane stage's data_dir prefix: views of the toy 3D world
DIFFUSION_STAGES = ("collab", "expert", "autoencoder")  # the latent diffusion system's: CelebA data, remat, crop_zoom
TRIPLANE_STAGES = ("triplane", "ddgi_mapping", "ddgi_modulation")  # those that may render a tri-plane GAN smaller
DDGI_PERCEPTUAL = ("autoencoder", "lpips")  # the DDGI stages' perceptual distances (ddgi_step.py)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # What to train: "collab" (the dynamic diffusers, everything else frozen: the paper's stage),
    # "expert" (one modality's UNet and condition encoder, the autoencoder frozen),
    # "autoencoder" (the KL autoencoder, with LDM's reconstruction + KL + patch-GAN objective) or
    # "gan" (a StyleGAN2 generator and discriminator from scratch: DDGI's frozen GAN; `system` names a
    # config returning a StyleGAN2Config) or "triplane" (DDGI-3D's toy EG3D, see below).
    stage: str = "collab"
    modality: str | None = None  # the expert stage's modality
    # The system to start from: "FILE.py:ARG" builds it from a config with fresh weights; then
    # `init_from` copies parameter subtrees from our checkpoints, e.g.
    # {"autoencoder": "ckpt/512_text", "modalities.text": "ckpt/512_text", "modalities.mask": "ckpt/512_mask"}.
    system: str = "released.py:512_codiff"
    init_from: tuple[tuple[str, str], ...] = ()
    seed: int = 0

    # Data: a prepared CelebAMultiModal TFDS directory (cdiff_jax.data.celeba_multimodal); the gan stage also
    # takes "fresh-toy-faces:SEED", new procedural toy faces for every batch (SEED other than the demo
    # dataset's 0, so the held-out evaluation faces are never trained on).
    data_dir: str = "data/tfds"
    data_workers: int = 0  # processes preparing whole batches beside the trainer; same batches for any count
    resolution: int = 512
    test_size: int = 3000
    # The official training jitter (cdiff_jax.data.pipeline.ZoomCrop) for the collab, expert and autoencoder stages:
    # each training image enlarged by up to this factor (9/8 in the official code) and cut back to `resolution` at a
    # random place, its mask and scribble alike; drawn from (seed, position), so a resumed run sees the same crops.
    # None: off. The official recipes read images of their training size, which their transform leaves untouched.
    crop_zoom: float | None = None

    # Optimisation, as the reference: AdamW, lr = base_learning_rate x global batch, no schedule.
    global_batch: int = 32
    base_learning_rate: float = 2e-6
    weight_decay: float = 0.01
    steps: int = 100_000
    steps_per_call: int = 1  # optimizer steps per device call (one lax.scan)
    # Micro-batches per optimizer step of the collab and expert stages: the global batch is split into this many
    # equal parts whose gradients are averaged inside the compiled step (the whole batch's gradient, in less
    # memory). (The official autoencoder recipes accumulate 2 batches; our autoencoder stage takes its whole batch.)
    gradient_accumulation: int = 1
    # Activation checkpointing of the collab, expert and autoencoder stages' networks (each UNet block, text
    # transformer layer and autoencoder block recomputed in the backward pass): a name in
    # cdiff_jax.nn.remat.POLICIES ("none", "full": keep nothing, "dots": keep the matmul and convolution results).
    remat: str = "none"
    condition_dropout: float = 0.0  # expert stage: enables classifier-free guidance later
    # > 0 keeps an exponential moving average of the trained parameters (LDM: 0.9999, with its
    # warm-up), which validation, sample grids and the exported system then use.
    ema_decay: float = 0.0

    # The autoencoder stage (LDM's defaults; its optimizers are Adam with betas 0.5/0.9). The
    # perceptual term needs LPIPS weights from a file (an LDM autoencoder checkpoint holds them);
    # set perceptual_weight=0 to train without it. The DDGI stages read the same file for ddgi_perceptual="lpips".
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0
    perceptual_weights: str | None = None
    disc_start: int = 50_001  # optimizer step at which the discriminator's terms switch on
    disc_weight: float = 0.5
    disc_filters: int = 64
    disc_layers: int = 3
    # The gan stage (stylegan2-ada-pytorch's names and its "auto" configuration's values; lr from the above).
    r1_gamma: float = 0.0256  # 0.0002 * resolution^2 / batch for 64x64 at batch 32
    r1_interval: int = 16
    style_mixing: float = 0.9
    gan_ema_kimg: float = 10.0
    gan_ema_rampup: float | None = 0.05
    # The triplane stage: an EG3D generator (`system` names a config returning an EG3DConfig without
    # super-resolution) fitted to "toy-3d-world:SEED" as an auto-decoder of `triplane_identities` toy faces, rendered
    # at `triplane_resolution` while training (the targets area-averaged to it; None: the generator's own).
    # `triplane_resolution` applies to the DDGI stages with a tri-plane GAN alike (its training renders and both
    # targets at it, samples at full size; a divisor of the toy world's 64); only these stages take it.
    triplane_identities: int = 1000
    triplane_resolution: int | None = None
    # > 0 adds this weight x the mean absolute error of the rendered expected depth against the toy world's exact
    # depth (world units) to the triplane stage's image error: the world knows its geometry, and images alone left
    # the generator's depth little better than random weights' (BENCHMARKS.md, "The toy tri-plane generator").
    triplane_depth_weight: float = 0.0
    # The DDGI stages, "ddgi_mapping" (M against the ground truth) then "ddgi_modulation" (T, M frozen, against
    # I^d_0 and the ground truth): `system` is our diffusion checkpoint directory (frozen), `gan` a generator
    # checkpoint (frozen), `data_dir` a trajectory cache (cdiff_jax.ddgi.trajectories); the modulation stage
    # starts from the mapping stage's heads, init_from=(("heads", "RUN/heads"),). Widths and loss weights are
    # ours (cdiff_jax/train/ddgi_step.py). Each target term is ddgi_l2_weight x MSE + ddgi_perceptual_weight x a
    # perceptual distance, "autoencoder" (the frozen autoencoder's latent distance: the toy world's) or "lpips"
    # (weights from `perceptual_weights`), + ddgi_identity_weight x pSp's ID loss (ArcFace IR-SE50 weights from
    # `ddgi_arcface_weights`, e.g. pSp's model_ir_se50.pth). A real-face run sets "lpips" and identity 0.1 (pSp's).
    gan: str | None = None
    ddgi_experts: tuple[str, ...] = ("text", "mask")
    ddgi_mapping_channels: int = 512
    ddgi_modulation_channels: int = 256
    ddgi_attention_gating: bool = True
    ddgi_l2_weight: float = 1.0
    ddgi_perceptual_weight: float = 0.8
    ddgi_ground_truth_weight: float = 1.0
    ddgi_perceptual: str = "autoencoder"
    ddgi_identity_weight: float = 0.0
    ddgi_arcface_weights: str | None = None
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

    def __post_init__(self):
        """Every field's type and range, so a typo in a config or a --set fails here, before any work."""
        check_field_types(self)
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: expected one of {', '.join(STAGES)}")
        for name, test, wanted in _RANGES:
            value = getattr(self, name)
            if value is not None and not test(value):
                raise ValueError(f"{name}={value!r}: must be {wanted}")
        if self.gradient_accumulation > 1 and self.stage not in DIFFUSION_STAGES:
            raise ValueError(
                f"gradient_accumulation={self.gradient_accumulation}: only the collab, expert and "
                f"autoencoder stages accumulate; the {self.stage} stage takes its whole batch at once "
                "(set it to 1)"
            )
        check_policy(self.remat)
        if self.remat != "none" and self.stage not in DIFFUSION_STAGES:
            raise ValueError(
                f"remat={self.remat!r}: only the collab, expert and autoencoder stages checkpoint "
                f"activations; set remat='none' for the {self.stage} stage"
            )
        if self.crop_zoom is not None and self.stage not in DIFFUSION_STAGES:
            raise ValueError(
                f"crop_zoom={self.crop_zoom}: only the collab, expert and autoencoder stages crop their "
                f"training images; set it to None for the {self.stage} stage"
            )
        if self.triplane_resolution is not None and self.stage not in TRIPLANE_STAGES:
            raise ValueError(
                f"triplane_resolution={self.triplane_resolution}: only the triplane and DDGI stages "
                f"render tri-planes; set it to None for the {self.stage} stage"
            )
        if self.triplane_depth_weight and self.stage != "triplane":
            raise ValueError(
                f"triplane_depth_weight={self.triplane_depth_weight}: only the triplane stage sees the toy world's "
                f"depth; set it to 0 for the {self.stage} stage"
            )
        if self.ddgi_perceptual not in DDGI_PERCEPTUAL:
            raise ValueError(f"ddgi_perceptual={self.ddgi_perceptual!r}: expected one of {', '.join(DDGI_PERCEPTUAL)}")
        if self.stage in ("ddgi_mapping", "ddgi_modulation"):
            self._check_ddgi_networks()
        if self.global_batch % self.gradient_accumulation:
            raise ValueError(
                f"global_batch {self.global_batch} must split into gradient_accumulation="
                f"{self.gradient_accumulation} equal micro-batches"
            )

    def _check_ddgi_networks(self) -> None:
        if self.ddgi_perceptual == "lpips" and self.ddgi_perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError(
                'ddgi_perceptual="lpips" needs LPIPS weights: set perceptual_weights=PATH (an LDM '
                'autoencoder checkpoint or an LPIPS state dict), or ddgi_perceptual="autoencoder"'
            )
        if self.ddgi_identity_weight > 0 and not self.ddgi_arcface_weights:
            raise ValueError(
                f"ddgi_identity_weight={self.ddgi_identity_weight} needs the identity network: set "
                "ddgi_arcface_weights=PATH (pSp's model_ir_se50.pth), or ddgi_identity_weight=0"
            )

    def ddgi_network_files(self) -> dict[str, str]:
        """The weight files the DDGI stages load for their terms ({field: path}), each checked to exist: a
        ValueError naming the field otherwise (the stage calls this before any work)."""
        files = {}
        if self.ddgi_perceptual == "lpips" and self.ddgi_perceptual_weight > 0:
            files["perceptual_weights"] = self.perceptual_weights
        if self.ddgi_identity_weight > 0:
            files["ddgi_arcface_weights"] = self.ddgi_arcface_weights
        for field, path in files.items():
            if not pathlib.Path(path).is_file():
                raise ValueError(f"{field}={path!r}: no such file; set it to the weight file's path")
        return files

    @property
    def learning_rate(self) -> float:
        return self.base_learning_rate * self.global_batch

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_RANGES = (  # field, test, what the test asks for (the *_every intervals: 0 is never)
    *(
        (name, lambda v: v >= 1, ">= 1")
        for name in (
            "resolution",
            "global_batch",
            "steps",
            "steps_per_call",
            "gradient_accumulation",
            "keep_checkpoints",
            "val_batches",
            "sample_count",
            "sample_steps",
            "r1_interval",
            "disc_filters",
            "disc_layers",
            "ddgi_mapping_channels",
            "ddgi_modulation_channels",
            "fsdp_min_size",
            "triplane_identities",
            "triplane_resolution",
        )
    ),
    *(
        (name, lambda v: v >= 0, ">= 0")
        for name in (
            "data_workers",
            "test_size",
            "log_every",
            "checkpoint_every",
            "val_every",
            "sample_every",
            "disc_start",
            "weight_decay",
            "kl_weight",
            "perceptual_weight",
            "disc_weight",
            "r1_gamma",
            "gan_ema_kimg",
            "gan_ema_rampup",
            "ddgi_l2_weight",
            "ddgi_perceptual_weight",
            "ddgi_ground_truth_weight",
            "ddgi_identity_weight",
        )
    ),
    ("base_learning_rate", lambda v: v > 0, "> 0"),
    ("triplane_depth_weight", lambda v: v >= 0, ">= 0"),
    ("crop_zoom", lambda v: v > 1, "> 1 (None: no crops)"),
    ("condition_dropout", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("style_mixing", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
)

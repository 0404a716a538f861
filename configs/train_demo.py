"""Training the shipped demo models (configs/demo_faces.py) on toy faces: every stage, a few hours on 2 CPU cores
(the two experts can train side by side, one core each: `taskset -c 0 ...` and `taskset -c 1 ...`).

The exact commands that produced cdiff_jax/demo_models/ (from the repository root):

    python -m cdiff_jax.data.toy_faces data/toy_faces --count 10000 --seed 0
    python -m cdiff_jax.data.celeba_multimodal data/toy_faces data/toy_tfds --resolution 64 --test-size 1000
    python train.py --config configs/train_demo.py:autoencoder --workdir runs/demo/autoencoder
    python train.py --config configs/train_demo.py:expert_text --workdir runs/demo/expert_text
    python train.py --config configs/train_demo.py:expert_mask --workdir runs/demo/expert_mask
    python train.py --config configs/train_demo.py:collab --workdir runs/demo/collab

DDGI's toy StyleGAN2 (configs/toy_gan.py) trains on its own, on endless fresh toy faces (no dataset to write):

    python train.py --config configs/train_demo.py:gan --workdir runs/demo/gan

DDGI-3D's toy tri-plane generator (configs/toy_eg3d.py) is fitted to the toy 3D world (cdiff_jax/data/toy_faces_3d.py)
as an auto-decoder; it resumes from its checkpoints when stopped and started again:

    python train.py --config configs/train_demo.py:triplane --workdir runs/demo/triplane

DDGI on the demo system and the toy GAN: sample the trajectory cache once, then the two stages in order:

    python -m cdiff_jax.ddgi.trajectories cdiff_jax/demo_models/collab data/toy_tfds runs/demo/ddgi/trajectories \
        --count 1024
    python train.py --config configs/train_demo.py:ddgi_mapping --workdir runs/demo/ddgi/mapping
    python train.py --config configs/train_demo.py:ddgi_modulation --workdir runs/demo/ddgi/modulation
    python train.py --config configs/train_demo.py:ddgi_modulation_ungated --workdir runs/demo/ddgi/modulation_ungated
    python -m cdiff_jax.evaluation.ddgi_toy --gan runs/demo/gan/generator --mapping-heads runs/demo/ddgi/mapping/heads \
        --heads runs/demo/ddgi/modulation/heads --ungated-heads runs/demo/ddgi/modulation_ungated/heads

DDGI-3D on the shipped toy tri-plane generator (cdiff_jax/demo_models/triplane, the triplane run's export copied
there): the same trajectory cache as 2D DDGI (the command above, if it is not there yet), the two stages in order
(rendering at 32x32 while training, as the triplane stage), then the view-consistency evaluation:

    python -m cdiff_jax.ddgi.trajectories cdiff_jax/demo_models/collab data/toy_tfds runs/demo/ddgi/trajectories \
        --count 1024
    python train.py --config configs/train_demo.py:ddgi3d_mapping --workdir runs/demo/ddgi3d/mapping
    python train.py --config configs/train_demo.py:ddgi3d_modulation --workdir runs/demo/ddgi3d/modulation
    python -m cdiff_jax.evaluation.ddgi_toy_3d --gan cdiff_jax/demo_models/triplane \
        --mapping-heads runs/demo/ddgi3d/mapping/heads --heads runs/demo/ddgi3d/modulation/heads \
        --out outputs/ddgi3d_eval

(`python train.py --config configs/train_demo.py:ddgi3d_modulation_ungated --workdir
runs/demo/ddgi3d/modulation_ungated` trains the attention-gating ablation as in 2D: as long again as the
modulation stage, and the 3D evaluation does not read it.)

Each stage starts from the systems the earlier ones exported (`init_from`), so run them in order (the two
experts need only the autoencoder). The evaluation's judges came from the same dataset:

    python -m cdiff_jax.evaluation.judges data/toy_faces cdiff_jax/evaluation/judges_toy --steps 1400 --overwrite
"""

from cdiff_jax.train.config import TrainConfig

RUNS = "runs/demo"
GAN_BATCH = 32
GAN_STEPS = 3125  # 100k images
# Fewer steps left artefacts in the autoencoder and a text expert that ignored its caption; both experts
# train equally long so that neither wins the weighting by training length (docs/research_log.md,
# "Measurement history moved from the code").
STEPS = {
    "autoencoder": 4000,
    "expert_text": 4000,
    "expert_mask": 4000,
    "collab": 500,
    "gan": GAN_STEPS,
    "triplane": 5000,
    # sized to a working session on 2 cores (BENCHMARKS.md, "DDGI training"), not to convergence
    "ddgi_mapping": 1200,
    "ddgi_modulation": 600,
    # as long as in 2D: 1.2-1.8 s per step at batch 16 rendering at 32x32 (bench/ddgi3d_train.py; BENCHMARKS.md,
    # "DDGI-3D training"), so under an hour together
    "ddgi3d_mapping": 1200,
    "ddgi3d_modulation": 600,
}


def get_config(arg: str = "collab") -> TrainConfig:
    """`arg`: autoencoder, expert_text, expert_mask, collab, gan, triplane, ddgi_mapping, ddgi_modulation,
    ddgi_modulation_ungated (the attention-gating ablation), or the same three DDGI stages on the toy tri-plane
    generator: ddgi3d_mapping, ddgi3d_modulation, ddgi3d_modulation_ungated."""
    common = dict(
        data_dir="data/toy_tfds",
        resolution=64,
        test_size=1000,
        log_every=25,
        checkpoint_every=250,
        keep_checkpoints=2,
        val_batches=4,
        sample_count=8,
        sample_steps=50,
    )
    autoencoder = ("autoencoder", f"{RUNS}/autoencoder/system")
    if arg == "autoencoder":
        # L1 + KL only: no LPIPS weights can ship with the repo, and the GAN term is for long runs (LDM
        # switches it on at step 50k); switched on early it paints artefacts over still-blurry reconstructions.
        return TrainConfig(
            stage="autoencoder",
            system="demo_faces.py:text",
            global_batch=8,
            base_learning_rate=5e-5,
            steps=STEPS["autoencoder"],
            perceptual_weight=0.0,
            disc_start=10**9,
            val_every=250,
            sample_every=500,
            **common,
        )
    if arg in ("expert_text", "expert_mask"):
        kind = arg.removeprefix("expert_")
        return TrainConfig(
            stage="expert",
            modality=kind,
            system=f"demo_faces.py:{kind}",
            init_from=(autoencoder,),
            global_batch=32,
            base_learning_rate=1e-5,
            steps=STEPS[arg],
            condition_dropout=0.1,
            val_every=200,
            sample_every=300,
            **common,
        )
    if arg == "collab":
        return TrainConfig(
            stage="collab",
            system="demo_faces.py",
            global_batch=32,
            base_learning_rate=3e-6,
            steps=STEPS["collab"],
            val_every=200,
            sample_every=300,
            init_from=(
                autoencoder,
                ("modalities.text", f"{RUNS}/expert_text/system"),
                ("modalities.mask", f"{RUNS}/expert_mask/system"),
            ),
            **common,
        )
    if arg == "gan":
        # stylegan2-ada-pytorch's "auto" settings for 64x64 at batch 32 (lr 0.0025, gamma 0.0256, ema 10 kimg with
        # ramp-up); one worker process renders the faces while the other core trains.
        return TrainConfig(
            stage="gan",
            system="toy_gan.py",
            data_dir="fresh-toy-faces:1000",
            resolution=64,
            global_batch=GAN_BATCH,
            base_learning_rate=0.0025 / GAN_BATCH,
            steps=STEPS["gan"],
            steps_per_call=1,
            data_workers=1,
            log_every=25,
            checkpoint_every=250,
            keep_checkpoints=2,
            val_every=0,
            sample_every=250,
            sample_count=16,
        )
    if arg == "triplane":
        # Trained at half the rendering resolution (a quarter of the rays); 256 identities, each seen from a new
        # view every time. Adam at 1e-3 with 1000 identities stayed at the average colour for 600 steps; 5e-3 with
        # 64 showed each identity's colours by step 200. Images alone left the depth as wrong as random weights'
        # after 4500 steps; the world's depth as a second target forms the geometry by step 400 (BENCHMARKS.md,
        # "The toy tri-plane generator").
        return TrainConfig(
            stage="triplane",
            system="toy_eg3d.py",
            data_dir="toy-3d-world:2000",
            resolution=64,
            global_batch=8,
            base_learning_rate=5e-3 / 8,
            steps=STEPS["triplane"],
            triplane_identities=256,
            triplane_resolution=32,
            triplane_depth_weight=1.0,
            data_workers=1,
            log_every=25,
            checkpoint_every=250,
            keep_checkpoints=2,
            val_every=0,
            sample_every=500,
            sample_count=4,
        )
    ddgi = arg.replace("ddgi3d_", "ddgi_")
    if ddgi in ("ddgi_mapping", "ddgi_modulation", "ddgi_modulation_ungated"):
        # Widths and the learning rate are first choices, not tuned on the toy world. DDGI-3D drives the toy
        # tri-plane generator from the same trajectory cache, rendering at its training resolution (32x32).
        three_d, stage = ddgi != arg, ddgi.removesuffix("_ungated")
        runs = f"{RUNS}/ddgi3d" if three_d else f"{RUNS}/ddgi"
        start = () if stage == "ddgi_mapping" else (("heads", f"{runs}/mapping/heads"),)
        return TrainConfig(
            stage=stage,
            system="cdiff_jax/demo_models/collab",
            gan="cdiff_jax/demo_models/triplane" if three_d else f"{RUNS}/gan/generator",
            data_dir=f"{RUNS}/ddgi/trajectories",
            resolution=64,
            global_batch=16,
            base_learning_rate=1e-4 / 16,
            steps=STEPS[arg.removesuffix("_ungated")],
            init_from=start,
            ddgi_mapping_channels=128,
            ddgi_modulation_channels=64,
            ddgi_attention_gating=not arg.endswith("_ungated"),
            triplane_resolution=32 if three_d else None,
            log_every=25,
            checkpoint_every=200,
            keep_checkpoints=2,
            val_every=0,
            sample_every=200,
            sample_count=8,
        )
    raise ValueError(f"unknown demo stage {arg!r}")

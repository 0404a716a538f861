"""train.py end to end on a tiny dataset: outputs, stages, failures and signal handlers (resume and devices: the
test_trainer_resume and test_trainer_devices modules)."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import event_files
import jax
import numpy as np
import pytest
import safetensors.numpy
from conftest import REPO, lpips_state_dict
from flax import nnx
from PIL import Image
from trainer_runs import run_train, train_cmd, train_here

from cdiff_jax.checkpoint import load_system
from cdiff_jax.config import load_config
from cdiff_jax.parallel import data_mesh
from cdiff_jax.system import init_system
from cdiff_jax.train import trainer
from cdiff_jax.train.stages import build_system, diffusion_stage

pytestmark = pytest.mark.slow


def test_a_run_writes_logs_checkpoints_samples_and_a_usable_system(data_dir, tmp_path):
    run = tmp_path / "run"
    # The rows of an earlier start killed before its first checkpoint: this start begins at step 0 and drops them.
    (run / "train").mkdir(parents=True)
    (run / "train/metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 99.0}) + "\n" for s in (1, 2)))
    result = run_train(run, data_dir, "keep_checkpoints=1")
    assert "step 6/6" in result.stdout
    from cdiff_jax.train.checkpoints import TrainCheckpoints

    checkpoints = TrainCheckpoints(run / "checkpoints")
    best, kept = checkpoints.best_step(), {int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()}
    checkpoints.close()
    assert best in (3, 6) and kept == {best, 6}  # the latest, and the best by validation loss
    lines = [json.loads(line) for line in (run / "train/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and r["loss"] != 99 for r in lines)
    assert (run / "val/metrics.jsonl").is_file()
    # TensorBoard: the losses, the sample grid and the settings the run started with.
    assert [(s, np.float32(v)) for s, v in event_files.scalars(run / "train")["loss"]] == [
        (r["step"], np.float32(r["loss"])) for r in lines
    ]
    ((step, grid),) = event_files.images(run / "train")["samples"]
    assert step == 6
    np.testing.assert_array_equal(grid, np.asarray(Image.open(run / "samples/0000006.png").convert("RGB")))
    ((step, text),) = event_files.texts(run / "train")["config"]
    assert step == 0 and json.loads(textwrap.dedent(text)) == json.loads((run / "train_config.json").read_text())
    sampled = subprocess.run(
        [
            sys.executable,
            str(REPO / "sample.py"),
            "--checkpoint",
            str(run / "system"),
            "--text",
            "a man",
            "--mask",
            str(REPO / "cdiff_jax/data/examples/face_mask.png"),
            "--steps",
            "2",
            "--batch",
            "1",
            "--out",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert (tmp_path / "s/grid.png").is_file()


def test_signal_handlers_are_restored_when_training_raises_or_stops(data_dir, tmp_path, monkeypatch):
    """A notebook's Ctrl-C works again after `train`, whether it raised or was stopped by a signal."""
    cfg = load_config(str(REPO / "configs/train_tiny.py")).replace(
        data_dir=str(data_dir), steps=100, val_every=0, sample_every=0, checkpoint_every=0
    )

    def ours(signum, frame):
        pass

    before = {signum: signal.signal(signum, ours) for signum in trainer.STOP_SIGNALS}
    try:
        real_diffusion_stage, during = trainer.diffusion_stage, []

        def failing(state, batches):
            during.append(signal.getsignal(signal.SIGINT))
            raise RuntimeError("a step failed")

        monkeypatch.setattr(
            trainer, "diffusion_stage", lambda *a: dataclasses.replace(real_diffusion_stage(*a), run=failing)
        )
        with pytest.raises(RuntimeError, match="a step failed"):
            trainer.train(cfg, tmp_path / "raised")
        assert during and during[0] is not ours  # the trainer's own handler while it trained
        assert all(signal.getsignal(s) is ours for s in trainer.STOP_SIGNALS)

        def preempted(*a):
            stage = real_diffusion_stage(*a)

            def run(state, batches):
                os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer: saved at this step, then 143
                return stage.run(state, batches)

            return dataclasses.replace(stage, run=run)

        monkeypatch.setattr(trainer, "diffusion_stage", preempted)
        assert trainer.train(cfg, tmp_path / "stopped") == 128 + signal.SIGTERM
        assert (tmp_path / "stopped/checkpoints" / str(cfg.steps_per_call)).is_dir()
        assert all(signal.getsignal(s) is ours for s in trainer.STOP_SIGNALS)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_expert_stage_trains_one_expert_and_its_encoder_only(data_dir, tmp_path):
    train_here(
        tmp_path / "expert",
        data_dir,
        "steps=2",
        "val_every=0",
        "sample_every=0",
        "ema_decay=0.9999",
        config="configs/train_tiny.py:expert_text",
    )

    trained = nnx.state(load_system(tmp_path / "expert/system"), nnx.Param)
    fresh = nnx.state(init_system(load_config("tiny_system.py:text"), seed=0), nnx.Param)
    changed = {
        path[:3]
        for (path, a), (_, b) in zip(nnx.to_flat_state(trained), nnx.to_flat_state(fresh))
        if not np.array_equal(np.asarray(a), np.asarray(b))
    }
    assert changed == {("modalities", "text", "expert"), ("modalities", "text", "encoder")}
    # With an average kept, the exported system is the average, not the last parameters.
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(tmp_path / "expert/checkpoints/2/state")
    exported = sum(np.sum(np.asarray(v, np.float64)) for path, v in nnx.to_flat_state(trained) if path[:3] in changed)
    total = lambda tree: sum(np.sum(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree))  # noqa: E731
    assert exported == pytest.approx(total(saved["ema"]), rel=1e-12)
    assert exported != pytest.approx(total(saved["params"]), rel=1e-9)


def test_non_finite_loss_stops_the_run_naming_the_last_good_checkpoint(data_dir, tmp_path):
    result = subprocess.run(
        train_cmd(
            tmp_path / "nan",
            data_dir,
            "base_learning_rate=1e30",
            "steps=50",
            "checkpoint_every=1",
            "val_every=0",
            "sample_every=0",
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "non-finite loss or gradient at step" in message and "last good checkpoint" in message
    last = message.rsplit(": ", 1)[1]
    assert (pathlib.Path(last) / "commit_success.txt").exists()


def test_autoencoder_stage_with_lpips_and_discriminator(data_dir, tmp_path):
    weights = tmp_path / "vae_with_loss.safetensors"
    safetensors.numpy.save_file(lpips_state_dict(np.random.default_rng(0)), weights)
    result = run_train(
        tmp_path / "vae",
        data_dir,
        "perceptual_weight=1.0",
        f"perceptual_weights={weights}",
        config="configs/train_tiny.py:autoencoder",
    )
    records = [json.loads(line) for line in (tmp_path / "vae/train/metrics.jsonl").read_text().splitlines()]
    # disc_start=3: the adversarial terms are exactly off for three steps, then on
    assert [r["disc_loss"] != 0 for r in records] == [False] * 3 + [True] * 3
    assert all(r["d_weight"] > 0 and r["rec_loss"] > 0 for r in records[3:])
    assert (tmp_path / "vae/samples/0000006.png").is_file()
    exported = load_system(tmp_path / "vae/system")
    # The exported latents are centred and scaled: the printed normalisation is the one in the config, and
    # an expert stage that takes this autoencoder adopts both.
    printed = result.stderr.split("latent normalisation for this autoencoder: scale_factor ")[1].split(" (")[0]
    scale, shift = printed.split(", latent_shift ")
    ae_cfg = exported.cfg.autoencoder
    assert ae_cfg.scale_factor == pytest.approx(float(scale), rel=1e-5) and float(scale) != 0.5
    assert ae_cfg.latent_shift == pytest.approx([float(m) for m in shift.split(", ")], rel=1e-5)
    assert len(ae_cfg.latent_shift) == ae_cfg.embed_dim and any(ae_cfg.latent_shift)
    expert_cfg = load_config(f"{REPO}/configs/train_tiny.py:expert_text").replace(
        init_from=(("autoencoder", str(tmp_path / "vae/system")),)
    )
    assert build_system(expert_cfg).cfg.autoencoder == ae_cfg

    fresh = nnx.state(init_system(load_config("tiny_system.py:text"), seed=0), nnx.Param)
    changed = {
        path[0]
        for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(exported, nnx.Param)), nnx.to_flat_state(fresh))
        if not np.array_equal(np.asarray(a), np.asarray(b))
    }
    assert changed == {"autoencoder"}


def test_autoencoder_stage_refuses_to_skip_lpips_silently(data_dir, tmp_path):
    result = subprocess.run(
        train_cmd(tmp_path / "vae", data_dir, "perceptual_weight=1.0", config="configs/train_tiny.py:autoencoder"),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "perceptual (LPIPS) term needs weights" in result.stderr and "perceptual_weight=0" in result.stderr
    assert not (tmp_path / "vae" / "checkpoints").exists()


def test_crop_zoom_reaches_the_training_batches(data_dir):
    """The stage's training loader crops with the config's zoom (the pipeline's tests hold what a crop is). Last in
    the module: its systems then initialise without JAX's first-use cost."""
    cfg = load_config("configs/train_tiny.py:expert_mask").replace(data_dir=str(data_dir))
    plain, cropped = (
        next(iter(diffusion_stage(cfg.replace(crop_zoom=zoom), data_mesh()).loader)) for zoom in (None, 1.5)
    )
    np.testing.assert_array_equal(plain["tokens"], cropped["tokens"])  # the same records, cropped
    assert not np.array_equal(plain["image"], cropped["image"]) and not np.array_equal(plain["mask"], cropped["mask"])

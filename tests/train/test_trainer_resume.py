"""train.py stopped and resumed: SIGKILL then resume equals an uninterrupted run; SIGTERM saves and exits 143."""

import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import REPO
from trainer_runs import run_train, train_cmd, train_here, trained_params

pytestmark = pytest.mark.slow


def _wait_for_checkpoint(workdir, step, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "checkpoints" / str(step) / "commit_success.txt").exists():
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended before checkpoint {step}: {process.stdout.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {step} within {timeout}s")


# Killed at checkpoint 8 of 24: four more checkpoints (several seconds) before the run could end on its own. The
# training crops are on, so the resumed run must also draw the crops the uninterrupted one drew.
SLOW = ("steps=24", "checkpoint_every=4", "val_every=0", "sample_every=0", "crop_zoom=1.25")


def test_sigkill_then_resume_equals_an_uninterrupted_run_bit_for_bit(data_dir, tmp_path):
    train_here(tmp_path / "straight", data_dir, *SLOW)  # the reference: train.py's run, without its subprocess
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        train_cmd(killed, data_dir, *SLOW), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    _wait_for_checkpoint(killed, 8, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "system").exists(), "the run finished before it was killed"
    resumed = run_train(killed, data_dir, *SLOW)
    assert "resumed from" in resumed.stderr
    jax.tree.map(np.testing.assert_array_equal, trained_params(tmp_path / "straight"), trained_params(killed))


def test_sigterm_saves_and_exits_with_the_preempted_status(data_dir, tmp_path):
    workdir = tmp_path / "term"
    process = subprocess.Popen(
        train_cmd(workdir, data_dir, *SLOW, "steps=100000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    _wait_for_checkpoint(workdir, 4, process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "stopped by signal" in out
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] >= 4 and (workdir / "checkpoints" / str(steps[-1]) / "commit_success.txt").exists()

"""train.py across devices and processes: eight simulated devices, and two processes of four, train like one."""

import json
import os
import pathlib
import socket
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO
from trainer_runs import run_train, train_cmd, train_here, trained_params

pytestmark = pytest.mark.slow


def _devices_env(count):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}


FAST = ("val_every=0", "sample_every=0", "checkpoint_every=100")


@pytest.fixture(scope="module")
def one_device(data_dir, tmp_path_factory):
    """One run on one device, the reference of both tests (the config has no learning-rate schedule, so its
    first four steps are those of a four-step run); in this process when it has one device."""
    workdir = tmp_path_factory.mktemp("devices") / "one"
    if jax.device_count() == 1:
        train_here(workdir, data_dir, *FAST)
    else:
        run_train(workdir, data_dir, *FAST, env=_devices_env(1))
    return workdir


def metrics(workdir):
    return [json.loads(line) for line in pathlib.Path(workdir / "train/metrics.jsonl").read_text().splitlines()]


def test_eight_devices_train_like_one(data_dir, one_device, tmp_path):
    run_train(tmp_path / "eight", data_dir, *FAST, "fsdp_min_size=4096", env=_devices_env(8))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
        trained_params(one_device),
        trained_params(tmp_path / "eight"),
    )


def test_two_processes_of_four_devices_train_like_one_process(data_dir, one_device, tmp_path):
    workdir = tmp_path / "multi"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**_devices_env(4), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    processes = [
        subprocess.Popen(
            train_cmd(workdir, data_dir, *FAST, "steps=4")
            + ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(o[-2000:] for o in outputs)
    # Every step, not only the last, against the same steps of the one-process run.
    multi, single = metrics(workdir), metrics(one_device)[:4]
    assert [r["step"] for r in multi] == [r["step"] for r in single] == [1, 2, 3, 4]
    for ours, theirs in zip(multi, single):
        np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)
        np.testing.assert_allclose(ours["grad_norm"], theirs["grad_norm"], rtol=1e-4)
    # Both processes exported the system together: its trained parameters are the last checkpoint's, nothing is
    # left beside it.
    assert sorted(p.name for p in (workdir / "system").iterdir()) == ["config.json", "params"]
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".system.")]
    exported = _by_path(trained_params(workdir))
    with ocp.PyTreeCheckpointer() as checkpointer:  # as numpy: the saving topology (two processes) is not this one
        state = workdir / "checkpoints/4/state"
        as_numpy = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpointer.metadata(state).item_metadata.tree
        )
        saved = _by_path(checkpointer.restore(state, args=ocp.args.PyTreeRestore(restore_args=as_numpy))["params"])
    assert saved and set(saved) < set(exported)
    for path, value in saved.items():
        np.testing.assert_array_equal(exported[path], value, err_msg=path)


def _by_path(tree) -> dict[str, np.ndarray]:
    """A tree's arrays by their path as text (a checkpoint restored without a target has text keys)."""
    return {
        "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }

"""Checkpoint directories: round trip, atomic replacement, and one-line errors for foreign or damaged folders."""

import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO
from flax import nnx

from cdiff_jax import checkpoint
from cdiff_jax.checkpoint import NotACheckpointError, load_config, load_system, save_system
from cdiff_jax.config import AutoencoderConfig, MaskEncoderConfig, ModalityConfig, SystemConfig, UNetConfig
from cdiff_jax.system import init_system

TINY = SystemConfig(
    autoencoder=AutoencoderConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, resolution=16),
    modalities={
        "mask": ModalityConfig(
            "mask",
            MaskEncoderConfig(mask_size=4, context_dim=8),
            UNetConfig(
                model_channels=32,
                channel_mult=(1,),
                num_res_blocks=1,
                attention_resolutions=(),
                num_heads=2,
                context_dim=8,
            ),
        )
    },
    latent_size=8,
)


def test_round_trip(tmp_path):
    system = init_system(TINY, seed=3)
    save_system(tmp_path / "ckpt", system)
    assert load_config(tmp_path / "ckpt") == TINY
    restored = load_system(tmp_path / "ckpt")
    jax.tree.map(np.testing.assert_array_equal, nnx.state(system, nnx.Param), nnx.state(restored, nnx.Param))


def test_existing_directory_is_kept_unless_overwrite(tmp_path):
    save_system(tmp_path / "ckpt", init_system(TINY, seed=0))
    with pytest.raises(FileExistsError):
        save_system(tmp_path / "ckpt", init_system(TINY, seed=1))
    save_system(tmp_path / "ckpt", init_system(TINY, seed=1), overwrite=True)
    restored = load_system(tmp_path / "ckpt")
    expected = init_system(TINY, seed=1)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(expected, nnx.Param), nnx.state(restored, nnx.Param))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_foreign_directory_is_a_clear_error(tmp_path):
    with pytest.raises(NotACheckpointError, match="python -m cdiff_jax.convert"):
        load_system(tmp_path)


def test_large_arrays_are_split_across_data_files_of_bounded_size(tmp_path, monkeypatch):
    """Shipped checkpoints live in git, so no data file may grow with the model."""
    monkeypatch.setattr(checkpoint, "DATA_FILE_BYTES", 1 << 20)
    tree = {"big": np.random.default_rng(0).normal(size=(1 << 20,)).astype(np.float32)}  # 4 MB
    checkpoint.save_arrays(tmp_path / "arrays", tree)
    sizes = [f.stat().st_size for f in (tmp_path / "arrays").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert len(sizes) > 1 and max(sizes) < tree["big"].nbytes
    restored = checkpoint.load_arrays(tmp_path / "arrays", tree)
    np.testing.assert_array_equal(restored["big"], tree["big"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved") / "ckpt"
    save_system(directory, init_system(TINY, seed=0))
    return directory


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda c: c.pop("autoencoder"), "missing field(s) ['autoencoder']"),
        (lambda c: c.update(bogus=1), "unknown field(s) ['bogus']"),
        (lambda c: c["autoencoder"].update(bogus=1), "AutoencoderConfig: unknown field(s) ['bogus']"),
        (lambda c: c.update(latent_size="x"), "latent_size='x': expected an integer"),
        (lambda c: c["schedule"].update(timesteps=-6), "timesteps must be an integer of at least 2"),
        (lambda c: c["modalities"]["mask"].update(kind="smell"), "unknown modality kind 'smell'"),
        (lambda c: c["modalities"]["mask"]["expert"].update(channel_mult=[1, "2"]), "channel_mult"),
    ],
)
def test_a_damaged_config_is_one_line_naming_the_file_and_the_key(saved, tmp_path, change, fragment):
    directory = tmp_path / "ckpt"
    shutil.copytree(saved, directory)
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotACheckpointError) as err:
        load_system(directory)
    assert str(directory / "config.json") in str(err.value) and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_a_config_that_is_not_json_is_one_line(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(NotACheckpointError, match="config.json is damaged"):
        load_config(tmp_path / "ckpt")


@pytest.mark.slow
def test_fuzzed_parameter_files_load_or_fail_in_one_line(saved, tmp_path):
    """Random truncations, byte flips and deletions of params/ files: a one-line NotACheckpointError naming the
    checkpoint, or a successful load (a flip inside array data); never another exception."""
    rng = np.random.default_rng(0)
    files = sorted(p.relative_to(saved) for p in saved.rglob("*") if p.is_file() and p.parent != saved)
    outcomes = set()
    for trial in range(24):
        directory = tmp_path / f"ckpt{trial}"
        shutil.copytree(saved, directory)
        victim = directory / files[int(rng.integers(len(files)))]
        data = bytearray(victim.read_bytes())
        if trial % 3 == 0:
            victim.unlink()
        elif trial % 3 == 1:
            victim.write_bytes(bytes(data[: int(rng.integers(0, max(len(data), 1)))]))
        elif data:
            for at in rng.integers(0, len(data), size=4):
                data[at] ^= int(rng.integers(1, 256))
            victim.write_bytes(bytes(data))
        try:
            load_system(directory)
            outcomes.add("loaded")
        except NotACheckpointError as err:
            assert str(directory) in str(err) and "\n" not in str(err), err
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_damaged_checkpoint_through_sample_py_is_one_line(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    for data_file in (tmp_path / "ckpt" / "params").rglob("*"):
        if data_file.is_file() and data_file.parent.name == "d":
            data_file.write_bytes(data_file.read_bytes()[:100])
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "sample.py"),
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--mask",
            str(REPO / "cdiff_jax/data/examples/face_mask.png"),
            "--steps",
            "2",
            "--batch",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "is damaged" in errors[0] and len(result.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "out").exists()


def test_a_killed_save_s_leftovers_are_removed_by_the_next_save_and_nothing_else_is(tmp_path):
    stale, fresh = tmp_path / ".ckpt.tmp-0123abcd", tmp_path / ".ckpt.old-89abcdef"
    foreign = [tmp_path / ".ckpt.tmp-notours", tmp_path / ".other.tmp-0123abcd", tmp_path / "ckpt.tmp-0123abcd"]
    for folder in (stale, fresh, *foreign):
        folder.mkdir()
    old = time.time() - 2 * checkpoint.STALE_SECONDS
    for folder in (stale, *foreign):
        os.utime(folder, (old, old))
    save_system(tmp_path / "ckpt", init_system(TINY, seed=0))
    assert not stale.exists() and fresh.exists() and all(f.exists() for f in foreign)

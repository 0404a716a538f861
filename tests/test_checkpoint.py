"""Checkpoint directories: round trip, atomic replacement, and clear errors for foreign folders."""

import jax
import numpy as np
import pytest
from flax import nnx

from cdiff_jax import checkpoint
from cdiff_jax.checkpoint import NotACheckpointError, load_config, load_system, save_system
from cdiff_jax.config import AutoencoderConfig, MaskEncoderConfig, ModalityConfig, SystemConfig, UNetConfig
from cdiff_jax.system import init_system

TINY = SystemConfig(
    autoencoder=AutoencoderConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, resolution=16),
    modalities={"mask": ModalityConfig("mask", MaskEncoderConfig(mask_size=4, context_dim=8),
                                       UNetConfig(model_channels=32, channel_mult=(1,), num_res_blocks=1,
                                                  attention_resolutions=(), num_heads=2, context_dim=8))},
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

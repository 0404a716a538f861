"""Configs: JSON round trip, the released configs, and official YAML translation."""

import numpy as np
import pytest
from conftest import reference_config

from cdiff_jax.config import SystemConfig, UNetConfig, load_config


@pytest.mark.parametrize("name", ["256_vae", "256_text", "512_mask", "512_codiff"])
def test_json_round_trip(name):
    cfg = load_config(f"released.py:{name}")
    assert SystemConfig.from_json(cfg.to_json()) == cfg


def test_released_collaborative_config_numbers():
    cfg = load_config("released.py:512_codiff")
    assert list(cfg.modalities) == ["mask", "text"] and cfg.is_collaborative
    assert cfg.autoencoder.downsample_factor == 8 and cfg.autoencoder.scale_factor == 0.141
    assert cfg.modalities["text"].diffuser.heads_for(64) == (32, 2)
    assert cfg.modalities["mask"].expert.heads_for(960) == (32, 30)


def test_official_yaml_translation(fixtures_root):
    cfg = reference_config(fixtures_root, "codiff")
    assert list(cfg.modalities) == ["mask", "text"]
    assert cfg.modalities["mask"].diffuser.out_channels == 1
    x_T = np.load(fixtures_root / "collab_ddim" / "ddim_eta0.npz")["x_T"]  # [B, C, h, w] of the reference run
    assert cfg.latent_size == x_T.shape[-1] and cfg.autoencoder.embed_dim == x_T.shape[1]


def test_unet_heads_must_be_given_once():
    with pytest.raises(ValueError, match="exactly one"):
        UNetConfig(num_heads=8, num_head_channels=64)


def test_bad_config_spec(tmp_path):
    with pytest.raises(ValueError, match="FILE.py"):
        load_config("something.txt")
    with pytest.raises(FileNotFoundError):
        load_config("no_such_config.py")


def test_official_yaml_is_refused_with_the_conversion_command(fixtures_root):
    """An official YAML describes a checkpoint to convert; load_config says how, in one line."""
    yaml_path = fixtures_root / "collab_ddim" / "config.yaml"
    with pytest.raises(ValueError) as err:
        load_config(str(yaml_path))
    message = str(err.value)
    assert "\n" not in message
    assert f"python -m cdiff_jax.convert CKPT DIR --config {yaml_path}" in message

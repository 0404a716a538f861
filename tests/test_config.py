"""Configs: JSON round trip, the released configs, the tests' tiny EG3D, official YAML translation and the
released training recipes."""

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


def test_the_tiny_eg3d_is_the_toy_world_s_generator_at_the_asked_resolution():
    toy, tiny = load_config("toy_eg3d.py"), load_config("tiny_eg3d.py:16")
    assert (tiny.img_resolution, tiny.neural_rendering_resolution, tiny.superresolution) == (16, 16, "none")
    world = ("ray_start", "ray_end", "avg_camera_radius", "avg_camera_pivot", "fov_degrees", "c_gen_conditioning_zero")
    assert all(getattr(tiny, name) == getattr(toy, name) for name in world)
    assert tiny.plane_channels < toy.plane_channels and load_config("tiny_eg3d.py").img_resolution == 32
    for arg in ("x", "2"):
        with pytest.raises(ValueError, match="ARG is the image resolution"):
            load_config(f"tiny_eg3d.py:{arg}")


def test_official_yaml_is_refused_with_the_conversion_command(fixtures_root):
    """An official YAML describes a checkpoint to convert; load_config says how, in one line."""
    yaml_path = fixtures_root / "collab_ddim" / "config.yaml"
    with pytest.raises(ValueError) as err:
        load_config(str(yaml_path))
    message = str(err.value)
    assert "\n" not in message
    assert f"python -m cdiff_jax.convert CKPT DIR --config {yaml_path}" in message


# The official recipes' numbers, read off ziqihuangg/Collaborative-Diffusion: configs/<yaml> (data.params.batch_size,
# lightning.trainer.accumulate_grad_batches, model.base_learning_rate, the autoencoder's lossconfig), 4 GPUs
# (README's --gpus 0,1,2,3) and main.py's scale_lr (lr = accumulate x GPUs x batch x base lr).
OFFICIAL_RECIPES = {  # recipe: (YAML, global batch = 4 x batch x accumulate, learning rate, accumulate)
    "autoencoder_256": ("256_vae.yaml", 4 * 8 * 2, 2 * 4 * 8 * 4.5e-6, 2),
    "autoencoder_512": ("512_vae.yaml", 4 * 2 * 2, 2 * 4 * 2 * 4.5e-6, 2),
    "expert_text_256": ("256_text.yaml", 4 * 8, 4 * 8 * 2e-6, 1),
    "expert_text_512": ("512_text.yaml", 4 * 8, 4 * 8 * 2e-6, 1),
    "expert_mask_256": ("256_mask.yaml", 4 * 8, 4 * 8 * 2e-6, 1),
    "expert_mask_512": ("512_mask.yaml", 4 * 8, 4 * 8 * 1e-6, 1),
    "collab_256": ("256_codiff_mask_text.yaml", 4 * 8, 4 * 8 * 2e-6, 1),
    "collab_512": ("512_codiff_mask_text.yaml", 4 * 8, 4 * 8 * 2e-6, 1),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_RECIPES))
def test_released_recipes_have_the_official_numbers(name):
    from cdiff_jax.configs import train_released

    yaml, batch, learning_rate, accumulate = OFFICIAL_RECIPES[name]
    cfg = load_config(f"train_released.py:{name}")
    stage, _, size = name.rpartition("_")
    assert cfg.resolution == int(size) and cfg.global_batch == batch
    assert cfg.learning_rate == pytest.approx(learning_rate)
    assert cfg.gradient_accumulation == accumulate and cfg.ema_decay == 0 and cfg.crop_zoom is None
    assert cfg.test_size == 3000
    assert load_config(cfg.system).autoencoder.resolution == int(size)  # the released architecture of that size
    if stage == "autoencoder":
        assert (cfg.disc_start, cfg.kl_weight, cfg.disc_weight, cfg.perceptual_weight, cfg.disc_layers) == (
            50_001,
            1e-6,
            0.5,
            1.0,
            3,
        )
    else:
        assert cfg.weight_decay == 0.01 and cfg.condition_dropout == 0  # torch's AdamW default; no unconditional mode
        assert ("autoencoder", f"runs/released/{size}/autoencoder/system") in cfg.init_from
    if stage.startswith("expert_"):
        assert cfg.stage == "expert" and cfg.modality == stage.removeprefix("expert_")
    assert f"configs/{yaml}" in train_released.__doc__  # its table names the YAML ...
    assert f"configs/train_released.py:{stage}_512 " in train_released.__doc__  # ... and the command (256: the same)


def test_train_collab_is_the_collab_recipe():
    for size in (256, 512):
        assert load_config(f"train_collab.py:{size}") == load_config(f"train_released.py:collab_{size}")

"""TrainConfig's DDGI loss fields: defaults that keep what runs before them computed, and one-line errors naming
the problem and its fix."""

import pytest

from cdiff_jax.config import load_config
from cdiff_jax.train.config import TrainConfig

DDGI = dict(stage="ddgi_mapping", gan="runs/gan/generator", data_dir="runs/ddgi/trajectories")


@pytest.mark.parametrize("arg", ["ddgi_mapping", "ddgi_modulation", "ddgi3d_mapping", "ddgi3d_modulation_ungated"])
def test_the_demo_ddgi_stages_keep_the_autoencoder_stand_in_and_no_identity_term(arg):
    cfg = load_config(f"configs/train_demo.py:{arg}")
    assert (cfg.ddgi_perceptual, cfg.ddgi_identity_weight, cfg.ddgi_arcface_weights) == ("autoencoder", 0.0, None)
    assert cfg.ddgi_network_files() == {}  # nothing to load


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(ddgi_identity_weight=-0.1), r"^ddgi_identity_weight=-0.1: must be >= 0$"),
        (dict(ddgi_perceptual_weight=-1.0), r"^ddgi_perceptual_weight=-1.0: must be >= 0$"),
        (dict(ddgi_perceptual="vgg"), r"^ddgi_perceptual='vgg': expected one of autoencoder, lpips$"),
        (
            dict(ddgi_identity_weight=0.1),
            r"^ddgi_identity_weight=0.1 needs the identity network: set "
            r"ddgi_arcface_weights=PATH .*, or ddgi_identity_weight=0$",
        ),
        (
            dict(ddgi_perceptual="lpips"),
            r'^ddgi_perceptual="lpips" needs LPIPS weights: set perceptual_weights=PATH .*'
            r'or ddgi_perceptual="autoencoder"$',
        ),
    ],
)
def test_bad_ddgi_loss_settings_fail_in_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**DDGI, **change)


def test_networks_are_asked_for_only_where_their_terms_are_on(tmp_path):
    TrainConfig(**DDGI, ddgi_perceptual="lpips", ddgi_perceptual_weight=0.0)  # LPIPS weighted 0: no file needed
    TrainConfig(stage="collab", ddgi_identity_weight=0.1)  # other stages do not read the DDGI fields
    arcface, lpips = tmp_path / "model_ir_se50.pth", tmp_path / "512_vae.ckpt"
    cfg = TrainConfig(
        **DDGI,
        ddgi_perceptual="lpips",
        perceptual_weights=str(lpips),
        ddgi_identity_weight=0.1,
        ddgi_arcface_weights=str(arcface),
    )
    with pytest.raises(
        ValueError,
        match=r"^perceptual_weights='.*512_vae.ckpt': no such file; set it to the weight "
        r"file's path$",
    ):
        cfg.ddgi_network_files()
    lpips.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^ddgi_arcface_weights='.*model_ir_se50.pth': no such file"):
        cfg.ddgi_network_files()
    arcface.write_bytes(b"")
    assert cfg.ddgi_network_files() == {"perceptual_weights": str(lpips), "ddgi_arcface_weights": str(arcface)}

"""`sample.py ddgi` on a tiny system, GAN and fresh heads: its outputs, the identity start, bad input."""

import errno
import json
import os

import numpy as np
import pytest
from conftest import REPO
from flax import nnx
from PIL import Image

from cdiff_jax.checkpoint import save_generator, save_system
from cdiff_jax.commands.sample import main
from cdiff_jax.config import StyleGAN2Config, load_config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.heads import DDGIHeads, save_heads
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.requests import DEMO_CAPTION, DEMO_DDGI3D_HEADS, DEMO_DDGI_HEADS, DEMO_GAN, DEMO_MASK, DEMO_TRIPLANE
from cdiff_jax.system import init_system

GAN = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channel_base=64, channel_max=8)
MASK = str(REPO / "cdiff_jax/data/examples/face_mask.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddgi")
    system = init_system(load_config("tiny_system.py"), seed=0)
    save_system(root / "system", system)
    generator = Generator(GAN, rngs=nnx.Rngs(0))
    generator.mapping.w_avg.set_value(np.full(8, 0.25, np.float32))
    save_generator(root / "gan", generator)
    save_generator(
        root / "gan16", Generator(StyleGAN2Config(**{**GAN.__dict__, "img_resolution": 16}), rngs=nnx.Rngs(0))
    )
    heads = DDGIHeads(
        heads_config(system.cfg, GAN, ("text", "mask"), mapping_channels=8, modulation_channels=8), rngs=nnx.Rngs(0)
    )
    save_heads(root / "heads", heads)
    return root


def args(root, out, *extra):
    return [
        "ddgi",
        "--checkpoint",
        str(root / "system"),
        "--gan",
        str(root / "gan"),
        "--heads",
        str(root / "heads"),
        "--mask",
        MASK,
        "--text",
        "a man",
        "--steps",
        "4",
        "--batch",
        "2",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_fresh_heads_give_the_gan_s_average_code_beside_the_diffusion_image(world, tmp_path):
    out = tmp_path / "out"
    assert main(args(world, out, "--at-step", "2", "--diffusion-image")) == 0
    np.testing.assert_array_equal(np.load(out / "ws.npy"), np.full((2, GAN.num_ws, GAN.w_dim), 0.25, np.float32))
    assert {p.name for p in (out / "images").iterdir()} == {"000.png", "001.png"}
    assert {p.name for p in (out / "diffusion").iterdir()} == {"000.png", "001.png"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["at_step"] == 2 and settings["diffusion_image"] and (out / "grid.png").is_file()


@pytest.mark.slow
def test_without_diffusion_image_the_sampler_stops_at_the_step_read(world, tmp_path):
    out = tmp_path / "out"
    assert main(args(world, out, "--at-step", "2")) == 0
    assert {p.name for p in (out / "images").iterdir()} == {"000.png", "001.png"}
    assert not (out / "diffusion").exists() and (out / "grid.png").is_file() and (out / "ws.npy").is_file()
    assert not json.loads((out / "settings.json").read_text())["diffusion_image"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--at-step", "5"), "--at-step 5: give 1..4"),
        (("--at-step", "0"), "--at-step 0: give 1..4"),
        (("--gan", "GAN16"), "makes 16x16 images but the diffusion system 32x32"),
        (("--heads", "/nonexistent"), "holds no DDGI heads"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(world, tmp_path, capsys, extra, message):
    extra = tuple(str(world / "gan16") if e == "GAN16" else e for e in extra)
    assert main(args(world, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_disk_that_fills_up_while_writing_is_one_line_and_keeps_out_as_it_was(world, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)  # ws.npy, after the pictures
    out = tmp_path / "out"
    assert main(args(world, out, "--at-step", "1")) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot write {out}: No space left on device; nothing was written (free space or choose another --out)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_another_system_needs_its_own_gan_and_heads(world, tmp_path, capsys):
    argv = [
        "ddgi",
        "--checkpoint",
        str(world / "system"),
        "--mask",
        MASK,
        "--text",
        "a man",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    assert "give --gan and --heads with --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_with_no_checkpoint_the_shipped_toy_gan_and_heads_are_used(tmp_path):
    out = tmp_path / "out"
    assert main(["ddgi", "--steps", "10", "--batch", "1", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["gan"] == str(DEMO_GAN) and settings["heads"] == str(DEMO_DDGI_HEADS)
    assert settings["mask"] == str(DEMO_MASK) and settings["text"] == DEMO_CAPTION
    image = np.asarray(Image.open(out / "images" / "000.png"))
    assert image.shape == (64, 64, 3) and image.std() > 10  # a face, not a flat image


@pytest.mark.slow
def test_with_views_and_no_gan_the_shipped_tri_plane_generator_and_its_heads_are_used(tmp_path):
    out = tmp_path / "out"
    assert main(["ddgi", "--yaw", "-0.3,0.3", "--steps", "10", "--batch", "1", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["gan"] == str(DEMO_TRIPLANE) and settings["heads"] == str(DEMO_DDGI3D_HEADS)
    assert [view["yaw"] for view in settings["views"]] == [-0.3, 0.3]
    left, right = (np.asarray(Image.open(out / "views" / f"000_{v:02d}.png")) for v in (0, 1))
    assert left.shape == (64, 64, 3) and left.std() > 10  # a face, not a flat image
    assert np.abs(left.astype(int) - right).mean() > 2  # seen from two sides

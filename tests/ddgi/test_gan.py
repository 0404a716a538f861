"""DDGI driving a 3D-aware generator (a tiny EG3D): sampling, training steps, the views command, and the
2D/3D mismatch named in one line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from flax import nnx
from PIL import Image

from cdiff_jax.checkpoint import save_generator, save_system
from cdiff_jax.commands.sample import main
from cdiff_jax.config import StyleGAN2Config, load_config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.gan import frontal_cameras, gan_images
from cdiff_jax.ddgi.heads import DDGIHeads, save_heads
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.system import init_system
from cdiff_jax.train.ddgi_step import DDGIObjective, ddgi_images

EG3D = load_config("tiny_eg3d.py:32")
GAN2D = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channel_base=64, channel_max=8)
MASK = str(REPO / "cdiff_jax/data/examples/face_mask.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddgi3d")
    system = init_system(load_config("tiny_system.py"), seed=0)
    save_system(root / "system", system)
    generator = TriPlaneGenerator(EG3D, rngs=nnx.Rngs(0))
    save_generator(root / "eg3d", generator)
    heads = {}
    for name, gan in (("heads3d", EG3D), ("heads2d", GAN2D)):
        heads[name] = DDGIHeads(
            heads_config(system.cfg, gan, ("text", "mask"), mapping_channels=8, modulation_channels=8), rngs=nnx.Rngs(0)
        )
        save_heads(root / name, heads[name])
    return root, system, generator, heads["heads3d"]


@pytest.mark.slow
def test_fresh_heads_render_the_average_code_at_the_training_camera(world):
    """Both stages start from w_avg, as in 2D; EG3D renders it at the frontal camera."""
    _, system, generator, heads = world
    cfg = system.cfg
    rng = np.random.default_rng(0)
    batch = {
        "x_t": jnp.asarray(
            rng.normal(size=(2, 2, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)), jnp.float32
        ),
        "tokens": jnp.asarray(rng.integers(1000, 2000, (2, 77)), jnp.int32),
        "mask": jnp.asarray(np.eye(19, dtype=np.float32)[rng.integers(0, 19, (2, 1024))].transpose(0, 2, 1)),
    }
    key = jax.random.key(3)
    images = nnx.jit(ddgi_images, static_argnames=("objective",))(
        heads,
        system,
        generator,
        batch,
        jnp.array([0, 1]),
        jnp.asarray([900, 100]),
        objective=DDGIObjective("ddgi_mapping", ("text", "mask")),
        key=key,
    )
    average = jnp.broadcast_to(generator.mapping.w_avg[...], (2, EG3D.num_ws, EG3D.w_dim))
    # Compiled: op by op, the renderer's many operations would each compile alone.
    expected = nnx.jit(gan_images)(generator, average, key, jnp.asarray(frontal_cameras(EG3D, 2)))
    assert images.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="PRNG key"):
        gan_images(generator, average, None)


def args(root, out, heads, *extra):
    return [
        "ddgi",
        "--checkpoint",
        str(root / "system"),
        "--gan",
        str(root / "eg3d"),
        "--heads",
        str(root / heads),
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
def test_views_of_ddgi_s_codes(world, tmp_path):
    root, *_ = world
    out = tmp_path / "out"
    assert main(args(root, out, "heads3d", "--yaw", "-0.3:0.3:3")) == 0
    assert json.loads((out / "settings.json").read_text())["views"][0] == {"yaw": -0.3, "pitch": 0.0}
    w_avg = np.asarray(world[2].mapping.w_avg[...])
    np.testing.assert_array_equal(np.load(out / "ws.npy"), np.broadcast_to(w_avg, (2, EG3D.num_ws, EG3D.w_dim)))
    assert len(list((out / "views").iterdir())) == 6 and len(list((out / "depth").iterdir())) == 6
    assert np.asarray(Image.open(out / "views.png")).shape[0] > 4 * 32  # per sample, a row of views and of depths


@pytest.mark.parametrize(
    "heads, extra, message",
    [
        ("heads2d", (), f"the heads make W+ codes of {GAN2D.num_ws} x 8 but the 3D-aware (EG3D) GAN takes 6 x 8"),
        ("heads3d", ("--yaw", "2"), "--yaw/--pitch: yaw 2.0"),
    ],
)
def test_bad_input_fails_in_one_line(world, tmp_path, capsys, heads, extra, message):
    root, *_ = world
    assert main(args(root, tmp_path / "out", heads, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()

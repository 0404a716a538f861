"""The DDGI toy evaluation on the demo system with a random GAN and fresh heads: every row from the right images."""

import numpy as np
import pytest
from flax import nnx

from cdiff_jax import viz
from cdiff_jax.checkpoint import load_system, save_generator
from cdiff_jax.config import StyleGAN2Config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.gan import gan_images
from cdiff_jax.ddgi.heads import DDGIHeads, save_heads
from cdiff_jax.evaluation import ddgi_toy as D
from cdiff_jax.evaluation import miniature as M
from cdiff_jax.nn.stylegan2 import Generator

pytestmark = pytest.mark.slow

GAN = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=64, mapping_layers=1, channel_base=64, channel_max=8)
COUNT, STEPS = 4, 10


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddgi_toy")
    generator = Generator(GAN, rngs=nnx.Rngs(0))
    generator.mapping.w_avg.set_value(np.full(GAN.w_dim, 0.25, np.float32))
    save_generator(root / "gan", generator)
    cfg = heads_config(
        load_system(M.DEMO_CHECKPOINT).cfg, GAN, ("text", "mask"), mapping_channels=8, modulation_channels=8
    )
    save_heads(root / "heads", DDGIHeads(cfg, rngs=nnx.Rngs(0)))
    results, images = D.run(
        root / "gan", root / "heads", root / "heads", count=COUNT, steps=STEPS, inversion_steps=3, batch=COUNT
    )
    return generator, results, images


def test_every_row_is_scored(evaluated):
    _, results, images = evaluated
    ddgi = [f"DDGI M, step {STEPS}/{STEPS}"] + [f"DDGI M + T, step {k}/{STEPS}" for k in (1, STEPS)]
    assert list(results) == ["real images", "GAN W+ inversion (ceiling)", "diffusion I^d_0", *ddgi]
    for row, r in results.items():
        assert images[row].shape == (COUNT, 64, 64, 3) and images[row].dtype == np.uint8
        for key in ("mask_accuracy", "mask_miou", "beard_accuracy", "age_accuracy", "ssim"):
            assert 0 <= r[key] <= 1 or key == "ssim", (row, key)
        assert ("frechet" in r) == (row != "real images")
    assert results["real images"]["ssim"] == pytest.approx(1.0) and results["real images"]["l2"] == 0.0
    assert "| DDGI M + T, step 1/10 |" in D.table(results)


def assert_same_pictures(actual: np.ndarray, expected: np.ndarray, name: str = "") -> None:
    """Equal uint8 pictures up to rounding: the same computation compiled in another program (recording a
    trajectory, another batch) may differ in the last float bit, which moves a rare pixel by one level."""
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3, (name, difference.max(), np.mean(difference > 0))


def test_the_diffusion_row_is_the_miniature_table_s_released_collaboration(evaluated):
    _, _, images = evaluated
    method = next(m for m in M.METHODS if m.name == "collaborative (released)")
    expected = M.generate(
        load_system(M.DEMO_CHECKPOINT), M.held_out_examples(COUNT), method, steps=STEPS, batch=COUNT, seed=0
    )
    assert_same_pictures(images["diffusion I^d_0"], expected)


def test_fresh_heads_render_the_gan_s_average_code_and_inversion_moves_towards_the_faces(evaluated):
    generator, results, images = evaluated
    w_avg = np.broadcast_to(np.full(GAN.w_dim, 0.25, np.float32), (1, GAN.num_ws, GAN.w_dim))
    average = viz.to_uint8(np.asarray(nnx.jit(gan_images)(generator, w_avg, None)))  # compiled, not op by op
    for row in images:
        if row.startswith("DDGI"):
            assert_same_pictures(images[row], np.repeat(average, COUNT, axis=0), row)
    assert results["GAN W+ inversion (ceiling)"]["l2"] < results[f"DDGI M, step {STEPS}/{STEPS}"]["l2"]

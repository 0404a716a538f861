"""The latent helpers: the latent shape of the config or of an image."""

from cdiff_jax.config import load_config
from cdiff_jax.latents import latent_shape


def test_latent_shape_of_the_config_or_of_an_image():
    cfg = load_config("tiny_system.py")
    f, c = cfg.autoencoder.downsample_factor, cfg.autoencoder.embed_dim
    assert latent_shape(cfg) == (cfg.latent_size, cfg.latent_size, c)
    assert latent_shape(cfg, 8 * f, 4 * f) == (8, 4, c)

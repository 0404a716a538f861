"""Released GAN generator files -> our generator checkpoints: the one entry point of `cdiff convert`
for GANs. An NVIDIA network pickle is read once and converted by what its `G_ema` is (StyleGAN2-ADA's
`Generator` or EG3D's `TriPlaneGenerator`); rosinality, pSp and e4e `.pt` files are StyleGAN2."""

from __future__ import annotations

import pathlib

from cdiff_jax.checkpoint import check_destination, save_generator
from cdiff_jax.convert import eg3d, stylegan2
from cdiff_jax.weights.network_pickle import read_network_pickle


def load_any_generator(src):
    """(generator, a one-line description) of a GAN file of any supported kind."""
    path = pathlib.Path(src)
    if path.is_file() and path.suffix.lower() == stylegan2.PICKLE_SUFFIX:
        snapshot = read_network_pickle(path)
        if eg3d.is_eg3d_snapshot(snapshot):
            generator = eg3d.generator_from_snapshot(snapshot, path)
            return generator, f"EG3D generator (nvidia-pickle): {generator.cfg}"
        loaded = stylegan2.generator_from_snapshot(snapshot, path)
    else:
        loaded = stylegan2.load_gan_file(path)
    return loaded.generator, f"StyleGAN2 generator ({loaded.source_format}): {loaded.generator.cfg}"


def convert_gan(src, dst, *, overwrite: bool = False) -> str:
    """Convert a GAN file into our checkpoint directory (config.json + params/); returns its description."""
    dst = check_destination(dst, overwrite)
    generator, description = load_any_generator(src)
    save_generator(dst, generator, overwrite=overwrite)
    return description

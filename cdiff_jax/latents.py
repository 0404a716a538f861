"""Images <-> latents outside the sampler, and the latent shape of an image: the autoencoder's passes as jitted pure
functions of its `(graphdef, state)` (nnx.split), so one compiled program serves any weights of the same shapes.

For pictures and measurements around sampling: trajectories decoded step by step, an edited face's
latent, reconstructions as the ceiling of what any sampler can show.
"""

from __future__ import annotations

import jax
from flax import nnx

from cdiff_jax.config import SystemConfig


def latent_shape(cfg: SystemConfig, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(h, w, channels) of the latent of an image of `height` x `width` pixels; the config's
    latent_size square when no size is given."""
    f = cfg.autoencoder.downsample_factor
    h = cfg.latent_size if height is None else height // f
    w = cfg.latent_size if width is None else width // f
    return h, w, cfg.autoencoder.embed_dim


@jax.jit(static_argnames=("graphdef",))
def encode_latent(graphdef, state, images, noise):
    """The scaled latent of images [B, H, W, 3] from the posterior sample drawn with `noise`."""
    return nnx.merge(graphdef, state).encode_latent(images, noise)


@jax.jit(static_argnames=("graphdef",))
def decode_latent(graphdef, state, z):
    """Images [B, H, W, 3] in about [-1, 1] of scaled latents z."""
    return nnx.merge(graphdef, state).decode_latent(z)


@jax.jit(static_argnames=("graphdef",))
def reconstruct(graphdef, state, images):
    """Autoencoder reconstructions (posterior mean) of images."""
    return nnx.merge(graphdef, state).reconstruct(images)

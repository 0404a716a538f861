"""Images <-> latents outside the sampler: the autoencoder's passes as jitted pure functions of its
`(graphdef, state)` (nnx.split), so one compiled program serves any weights of the same shapes.

For pictures and measurements around sampling: trajectories decoded step by step, an edited face's
latent, reconstructions as the ceiling of what any sampler can show.
"""

from __future__ import annotations

import jax
from flax import nnx


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

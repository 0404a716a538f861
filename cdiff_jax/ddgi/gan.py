"""The frozen GAN that DDGI's W+ codes drive: a StyleGAN2 generator (2D) or EG3D (3D-aware).

Both read w_avg from `generator.mapping`; `gan_images` renders codes either way. EG3D renders at
cameras (default: the frontal camera of its average pose, DDGI's training camera, a config choice
of ours since the paper does not publish one) with the renderer's uniforms drawn from `key`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cdiff_jax.cameras import orbit_cameras
from cdiff_jax.config import EG3DConfig
from cdiff_jax.nn.eg3d import TriPlaneGenerator, draw_uniforms


def is_3d(generator) -> bool:
    return isinstance(generator, TriPlaneGenerator)


def frontal_cameras(cfg: EG3DConfig, batch: int) -> np.ndarray:
    """[batch, 25] labels of the frontal camera at the generator's average radius and pivot."""
    camera = orbit_cameras(
        [0.0], [0.0], radius=cfg.avg_camera_radius, pivot=cfg.avg_camera_pivot, fov_degrees=cfg.fov_degrees
    )
    return np.repeat(camera, batch, axis=0)


def gan_images(
    generator, ws: jax.Array, key: jax.Array | None, cameras: jax.Array | None = None, resolution: int | None = None
) -> jax.Array:
    """Images [B, R, R, 3] of W+ codes ws [B, num_ws, w_dim]; `key`, `cameras` [B, 25] and the neural rendering
    `resolution` (default the generator's; fewer rays where a cheaper rendering will do) for EG3D only."""
    batch = ws.shape[0]
    noises = (generator.backbone if is_3d(generator) else generator).synthesis.noises(batch, "const", None, None)
    if not is_3d(generator):
        if resolution is not None:
            raise ValueError("gan_images: a StyleGAN2 generator has no neural rendering resolution")
        return generator.synthesis(ws, noises)
    if key is None:
        raise ValueError("gan_images: EG3D's renderer draws its samples along each ray from a PRNG key; pass one")
    cfg = generator.cfg
    resolution = resolution or cfg.neural_rendering_resolution
    cameras = jnp.asarray(frontal_cameras(cfg, batch)) if cameras is None else cameras
    draws = draw_uniforms(key, cfg, batch, resolution)
    return generator.views(ws, cameras, draws, noises, resolution).image

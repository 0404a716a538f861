"""A tiny tri-plane generator (EG3D) for tests and smoke runs: the toy world's cameras and ray range
(`toy_eg3d.py`) at a few channels and samples per ray, without super-resolution.

ARG: its image and rendering resolution (default 32), e.g. `tiny_eg3d.py:16`; tri-planes of 8x8 below 32, 16x16
from 32 on.
"""

import dataclasses

from cdiff_jax.config import EG3DConfig
from cdiff_jax.configs import toy_eg3d


def get_config(arg: str = "32") -> EG3DConfig:
    if not arg.isdigit() or int(arg) < 4:
        raise ValueError(f"tiny_eg3d.py:{arg}: ARG is the image resolution in pixels (4 or more), e.g. tiny_eg3d.py:32")
    resolution = int(arg)
    return dataclasses.replace(
        toy_eg3d.get_config(),
        z_dim=8,
        w_dim=8,
        img_resolution=resolution,
        neural_rendering_resolution=resolution,
        plane_resolution=8 if resolution < 32 else 16,
        plane_channels=4,
        mapping_layers=1,
        channel_base=32,
        channel_max=8,
        depth_resolution=4,
        depth_resolution_importance=4,
    )

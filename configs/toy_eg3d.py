"""The toy tri-plane generator (EG3D) that DDGI-3D maps into: 64x64 views of the toy 3D world, fitted as an
auto-decoder (one learned code per identity; `cdiff_jax/train/triplane_step.py` says why not a GAN).

Tri-planes of 64x64 with 16 features each, rendered at 64x64 with 24 + 24 samples per ray and no
super-resolution; the toy world's camera orbit (radius 2.7 around the origin, EG3D's field of view); the
mapping ignores the camera (an identity's code is the same from every view). 10 W+ entries.
Trained by `configs/train_demo.py:triplane`.
"""

from cdiff_jax.config import EG3DConfig
from cdiff_jax.data import toy_faces_3d


def get_config(arg: str = "") -> EG3DConfig:
    return EG3DConfig(
        z_dim=64,
        w_dim=128,
        img_resolution=64,
        neural_rendering_resolution=64,
        superresolution="none",
        plane_resolution=64,
        plane_channels=16,
        mapping_layers=2,
        channel_base=2048,
        channel_max=128,
        depth_resolution=24,
        depth_resolution_importance=24,
        ray_start=2.3,
        ray_end=3.1,
        c_gen_conditioning_zero=True,
        avg_camera_radius=toy_faces_3d.RADIUS,
        avg_camera_pivot=toy_faces_3d.PIVOT,
        fov_degrees=toy_faces_3d.FOV_DEGREES,
    )

"""EG3D at the released FFHQ-512 size (ffhq512-128: neural rendering at 128, 48 + 48 samples per ray),
random weights, one identity: seconds per view split into backbone (tri-planes), volume rendering
and super-resolution, and views per second when the tri-planes are reused.

    python bench/eg3d.py [--resolution 128] [--repeats 3]
    .venv-reference/bin/python bench/reference_eg3d_torch.py --source EG3D_CHECKOUT/eg3d   # the official code

Prints a float32 4096^3 matmul's time as the same-run baseline.
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from timing import best_time, matmul_flops_per_second, peak_rss_gb

from cdiff_jax.cameras import orbit_cameras
from cdiff_jax.config import EG3DConfig
from cdiff_jax.nn import eg3d


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=128, help="neural rendering resolution (default 128)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = dataclasses.replace(EG3DConfig(), neural_rendering_resolution=args.resolution)
    graphdef, state = nnx.split(eg3d.TriPlaneGenerator(cfg, rngs=nnx.Rngs(0)))
    camera = jnp.asarray(
        orbit_cameras(
            [0.3], [0.1], radius=cfg.avg_camera_radius, pivot=cfg.avg_camera_pivot, fov_degrees=cfg.fov_degrees
        )
    )
    ws = eg3d.map_latents(graphdef, state, jax.random.normal(jax.random.key(0), (1, cfg.z_dim)), camera)
    planes = eg3d.triplanes(graphdef, state, ws)
    draws = eg3d.draw_uniforms(jax.random.key(1), cfg, 1, args.resolution)

    @jax.jit
    def render(state, planes):
        return nnx.merge(graphdef, state).render(planes, camera, args.resolution, draws).features

    features = render(state, planes).reshape(1, args.resolution, args.resolution, -1)

    @jax.jit
    def upsample(state, features):
        return nnx.merge(graphdef, state).superresolution(features[..., :3], features, ws[:, -1], "none")

    print(
        f"jax {jax.__version__} {jax.default_backend()}, EG3D 512, neural rendering {args.resolution}, "
        f"{cfg.depth_resolution}+{cfg.depth_resolution_importance} samples per ray"
    )
    baseline = 2 * 4096**3 / matmul_flops_per_second()
    times = {
        "backbone (tri-planes)": best_time(lambda: eg3d.triplanes(graphdef, state, ws), repeats=args.repeats),
        "volume rendering": best_time(lambda: render(state, planes), repeats=args.repeats),
        "super-resolution": best_time(lambda: upsample(state, features), repeats=args.repeats),
        "one view, planes reused": best_time(
            lambda: eg3d.render_views(graphdef, state, planes, ws, camera, draws=draws), repeats=args.repeats
        ),
    }
    for name, seconds in times.items():
        print(f"{name:26s} {seconds:7.3f} s  ({seconds / baseline:6.1f} matmuls)")
    print(
        f"views per second with planes reused: {1 / times['one view, planes reused']:.2f}; "
        f"matmul 4096^3 {baseline:.3f} s; peak RSS {peak_rss_gb():.1f} GB"
    )


if __name__ == "__main__":
    main()

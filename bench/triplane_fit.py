"""How well a fitted toy tri-plane generator renders its training identities: image and depth error against the
toy 3D world, beside the same generator's random weights as the baseline measured in the same run.

    python bench/triplane_fit.py runs/demo/triplane/generator [--seed 2000] [--count 8]

Identities 0..count-1 of the run (their codes from the export's codes.npy; `--seed` the run's "toy-3d-world:SEED")
are rendered at yaw -20, 0 and +20 degrees (pitch 0) at the generator's own resolution and compared with the
world's exact views: the images' mean squared error (in [-1, 1]) and the expected depth's mean absolute error in
world units, over all pixels and over the pixels whose ray hits the head. Random z and random weights give the
depth error of a generator that has formed no surfaces.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.checkpoint import load_eg3d_generator
from cdiff_jax.data import toy_faces_3d
from cdiff_jax.evaluation.ddgi_toy_3d import depth_errors
from cdiff_jax.nn.eg3d import TriPlaneGenerator, map_latents, orbit_views
from cdiff_jax.noise import normal

YAWS_DEGREES = (-20.0, 0.0, 20.0)


def views_and_depth_errors(generator, latents: jax.Array, cameras: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Images of the latents at every camera, and the depth's mean absolute error over all pixels and the head."""
    graphdef, state = nnx.split(generator)
    ws = map_latents(graphdef, state, latents, jnp.zeros((len(latents), 25)))
    images, depth = orbit_views(graphdef, state, ws, cameras, jax.random.key(1))
    error_all, error_head = depth_errors(depth, cameras)
    return images, float(error_all.mean()), float(error_head.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generator", help="a triplane run's WORKDIR/generator (with codes.npy)")
    p.add_argument("--seed", type=int, default=2000, help="the run's toy-3d-world seed (default 2000, the demo's)")
    p.add_argument("--count", type=int, default=8, help="training identities to render (default 8)")
    args = p.parse_args()
    generator = load_eg3d_generator(args.generator)
    codes = jnp.asarray(np.load(f"{args.generator}/codes.npy")[: args.count])
    yaws = np.radians(YAWS_DEGREES)
    cameras = toy_faces_3d.cameras(yaws, np.zeros_like(yaws))
    images, depth_all, depth_head = views_and_depth_errors(generator, codes, cameras)
    world = toy_faces_3d.ToyViews(args.seed, len(codes))
    truth = []
    for i in range(len(codes)):
        face = world.face(i)
        truth.append(toy_faces_3d.render(face["image"] / 127.5 - 1, face["labels"], cameras, images.shape[2])["image"])
    image_error = float(np.mean((np.asarray(images) - np.stack(truth)) ** 2))
    print(
        f"training identities: image MSE {image_error:.4f}, depth error {depth_all:.3f} (all) {depth_head:.3f} (head)"
    )
    z = normal(jax.random.key(0), (len(codes), generator.cfg.z_dim))
    _, depth_all, depth_head = views_and_depth_errors(generator, z, cameras)
    print(f"random z:            depth error {depth_all:.3f} (all) {depth_head:.3f} (head)")
    fresh = TriPlaneGenerator(generator.cfg, rngs=nnx.Rngs(0))
    _, depth_all, depth_head = views_and_depth_errors(fresh, z, cameras)
    print(f"random weights:      depth error {depth_all:.3f} (all) {depth_head:.3f} (head)")


if __name__ == "__main__":
    main()

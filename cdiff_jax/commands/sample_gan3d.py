"""Render an EG3D generator from several views:
`python sample.py gan3d [--checkpoint DIR] [--count 2] [--seed 0] [--yaw -0.4:0.4:5] [--pitch 0] [--truncation 0.7]`.

DIR is an EG3D checkpoint (`cdiff convert ffhq512-128.pkl DIR`, or a triplane training run's WORKDIR/generator);
without --checkpoint, the shipped toy tri-plane generator (64x64 views of the toy 3D world). Each identity is
mapped with the frontal camera (as EG3D's sampling scripts do), its tri-planes are computed once, and it is
rendered from every (yaw, pitch) pair: angles in radians from the frontal view, a list `a,b,c` or a range
`start:stop:count`, or any cameras from a file (--cameras). --out gets views/ID_VIEW.png, depth/ID_VIEW.png
(near is bright), grid.png (per identity a row of views and a row of depth maps, columns labelled with the
angles), ws.npy, cameras.npy ([views, 25]) and settings.json; it is written beside --out and renamed into place.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import jax
import numpy as np
from flax import nnx

from cdiff_jax import requests, viz
from cdiff_jax.cameras import check_camera_labels, orbit_cameras
from cdiff_jax.checkpoint import NotACheckpointError, atomic_directory, load_eg3d_generator
from cdiff_jax.ddgi.gan import frontal_cameras
from cdiff_jax.nn import eg3d
from cdiff_jax.nn.stylegan2 import NOISE_MODES
from cdiff_jax.noise import normal
from cdiff_jax.paths import CannotWrite, writing
from cdiff_jax.progress import bar
from cdiff_jax.requests import UsageError

SETTINGS_FILE = "settings.json"
MAX_VIEWS = 64


def angles(text: str, flag: str) -> list[float]:
    """`a,b,c` or `start:stop:count` (count >= 1, both ends included) -> radians."""
    try:
        if ":" not in text:
            return [float(v) for v in text.split(",")]
        start, stop, count = text.split(":")
        start, stop, count = float(start), float(stop), int(count)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: give radians as a list (0.3,-0.3) or a range start:stop:count (-0.4:0.4:5)"
        ) from None
    if count < 1:
        raise UsageError(f"{flag} {text}: the count of a start:stop:count range must be at least 1")
    return [float(v) for v in np.linspace(start, stop, count)]


ANGLE_FLAGS = ("--yaw", "--pitch")


def parse_views(yaw: str, pitch: str) -> list[tuple[float, float]]:
    """(pitch, yaw) of every view: each pitch with each yaw."""
    views = list(itertools.product(angles(pitch, "--pitch"), angles(yaw, "--yaw")))
    if len(views) > MAX_VIEWS:
        raise UsageError(f"{len(views)} views: give at most {MAX_VIEWS} (yaw values x pitch values) per run")
    return views


def attach_angle_values(argv: list[str]) -> list[str]:
    """`--yaw -0.4:0.4:5` as `--yaw=-0.4:0.4:5`: argparse would take a value starting with '-' for a flag."""
    out, it = [], iter(argv)
    for arg in it:
        out.append(f"{arg}={next(it, '')}" if arg in ANGLE_FLAGS else arg)
    return out


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sample.py gan3d", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint",
        default=str(requests.DEMO_TRIPLANE),
        help="an EG3D checkpoint directory (default: the shipped toy tri-plane generator)",
    )
    p.add_argument("--count", type=int, default=2, help=f"identities, 1..{requests.MAX_BATCH} (default 2)")
    p.add_argument("--seed", type=int, default=0, help="z of identity i is drawn from the seed (default 0)")
    p.add_argument("--yaw", default="-0.4:0.4:5", help="yaw angles, radians (default -0.4:0.4:5)")
    p.add_argument("--pitch", default="0", help="pitch angles, radians (default 0)")
    p.add_argument(
        "--cameras", help="instead of --yaw/--pitch: a .npy of [V, 25] EG3D camera labels (e.g. a dataset's poses)"
    )
    p.add_argument("--truncation", type=float, default=1.0, help="psi: 1 none, 0 the average face (default 1)")
    p.add_argument("--truncation-cutoff", type=int, help="truncate only the first N rows of W+ (default all)")
    p.add_argument("--noise", choices=NOISE_MODES, default="const", help="the backbone's noise (default const)")
    p.add_argument("--out", default="outputs/gan3d", help="output folder (default outputs/gan3d)")
    return p.parse_args(attach_angle_values(list(argv)))


def view_cameras(cfg, views: list[tuple[float, float]]) -> np.ndarray:
    """[V, 25] cameras of the generator's orbit (its average radius, pivot and field of view) at each view."""
    pitches, yaws = zip(*views)
    try:
        return orbit_cameras(
            yaws, pitches, radius=cfg.avg_camera_radius, pivot=cfg.avg_camera_pivot, fov_degrees=cfg.fov_degrees
        )
    except ValueError as err:
        raise UsageError(f"--yaw/--pitch: {err}") from None


def camera_file(path: str) -> np.ndarray:
    """[V, 25] validated camera labels from a .npy file."""
    try:
        cameras = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"--cameras {path}: not a readable .npy array ({err})") from None
    try:
        cameras = check_camera_labels(cameras)
    except ValueError as err:
        raise UsageError(f"--cameras {path}: {err}") from None
    if len(cameras) > MAX_VIEWS:
        raise UsageError(f"--cameras {path}: {len(cameras)} views; give at most {MAX_VIEWS} per run")
    return cameras


def render_views(graphdef, state, ws, cameras, key, *, noise_mode="const", noise_key=None):
    """uint8 images [B, V, R, R, 3] and depths [B, V, r, r, 1] of W+ codes seen by every camera [V, 25]."""
    with bar(len(cameras), "rendering", unit="view") as progress:
        images, depths = eg3d.orbit_views(
            graphdef,
            state,
            ws,
            cameras,
            key,
            noise_mode=noise_mode,
            noise_key=noise_key,
            on_view=lambda: progress.update(1),
        )
    return viz.to_uint8(images), depths


def view_labels(views: list[tuple[float, float]]) -> list[str]:
    return [f"y{yaw:+.2f} p{pitch:+.2f}" for pitch, yaw in views]


def write_views(folder, images, depths, labels: list[str], cfg, grid_name: str = "views.png") -> None:
    """views/ID_VIEW.png, depth/ID_VIEW.png and a grid: per identity a row of views and a row of depth maps, the
    columns labelled."""
    scale = images.shape[2] // depths.shape[2]  # the depth map has the neural rendering resolution
    depth_images = viz.depth_picture(depths, cfg.ray_start, cfg.ray_end).repeat(scale, axis=2).repeat(scale, axis=3)
    for i, v in itertools.product(range(images.shape[0]), range(len(labels))):
        viz.save_png(folder / "views" / f"{i:03d}_{v:02d}.png", images[i, v])
        viz.save_png(folder / "depth" / f"{i:03d}_{v:02d}.png", depth_images[i, v])
    rows = np.stack([pictures for i in range(images.shape[0]) for pictures in (images[i], depth_images[i])])
    viz.save_png(folder / grid_name, viz.grid(rows, col_labels=labels))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if not 1 <= args.count <= requests.MAX_BATCH:
            raise UsageError(
                f"--count {args.count}: give 1..{requests.MAX_BATCH} identities per run; for more, run "
                "again with other --seed values"
            )
        views = parse_views(args.yaw, args.pitch)
        out = requests.output_folder(args.out, lambda path: (path / SETTINGS_FILE).is_file())
        generator = load_eg3d_generator(args.checkpoint)
        cfg = generator.cfg
        cameras = view_cameras(cfg, views) if args.cameras is None else camera_file(args.cameras)
        labels = view_labels(views) if args.cameras is None else [f"camera {v}" for v in range(len(cameras))]
        if args.truncation_cutoff is not None and not 1 <= args.truncation_cutoff <= cfg.num_ws:
            raise UsageError(f"--truncation-cutoff {args.truncation_cutoff}: this generator has {cfg.num_ws} W+ rows")
    except (UsageError, NotACheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    graphdef, state = nnx.split(generator)
    z_key, noise_key, render_key = jax.random.split(jax.random.key(args.seed), 3)
    start = time.perf_counter()
    ws = eg3d.map_latents(
        graphdef,
        state,
        normal(z_key, (args.count, cfg.z_dim)),
        frontal_cameras(cfg, args.count),
        truncation_psi=args.truncation,
        truncation_cutoff=args.truncation_cutoff,
    )
    images, depths = render_views(graphdef, state, ws, cameras, render_key, noise_mode=args.noise, noise_key=noise_key)
    seconds = time.perf_counter() - start
    settings = {
        "checkpoint": args.checkpoint,
        "count": args.count,
        "seed": args.seed,
        "cameras": args.cameras,
        "views": [{"yaw": yaw, "pitch": pitch} for pitch, yaw in views] if args.cameras is None else None,
        "truncation": args.truncation,
        "truncation_cutoff": args.truncation_cutoff,
        "noise": args.noise,
        "seconds": round(seconds, 2),
    }
    try:
        with writing(out), atomic_directory(out) as tmp:
            tmp.mkdir()
            write_views(tmp, images, depths, labels, cfg, grid_name="grid.png")
            np.save(tmp / "ws.npy", np.asarray(ws))
            np.save(tmp / "cameras.npy", cameras)
            (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    except CannotWrite as err:  # a full disk: --out is as it was
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.count} identities x {len(cameras)} views to {out} ({seconds:.1f}s including compilation)")
    return 0

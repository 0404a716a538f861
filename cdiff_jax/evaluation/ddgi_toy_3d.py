"""DDGI-3D on the toy 3D world: do DDGI's W+ codes, rendered by a tri-plane generator, stay the conditioned face
when the head turns, with the right shape?

The held-out pairs, the sampled trajectories and the heads' reading are the 2D evaluation's (`ddgi_toy`: the
miniature evaluation's pairs and noise, the released rule); the toy 3D world (`toy_faces_3d`) knows each face's
exact image, label map and depth at every pose. Views: the frontal one, then yaw -20 and +20 degrees at pitch 0
(`--yaw`, `--pitch`; the world covers yaw +-30 and pitch +-15). Rows:

* ground truth: the world's renders of each held-out face (the frontal one is the 2D toy face);
* the ceiling: the generator's W+ inversion (`ddgi_toy.invert`, its objective) of each face's frontal ground
  truth at the generator's frontal camera (which must be the world's), rendered at every view: what heads could
  reach through this generator from the front alone. It renders at 32x32 against the targets area-averaged (the
  triplane stage's training resolution: 64 costs four times the rays, about 1 s per face and step on 2 cores);
* DDGI-3D: the mapping stage's heads (M) and the modulation stage's (M + T) read at the last sampler step,
  rendered at every view.

Every generator row renders every view with the same uniforms. Columns: on the frontal render, the judges as in
2D (mask accuracy and mIoU against the input map, beard and age accuracy against the caption). At each side
view, the parser's pixel accuracy and mIoU against the world's label map at that pose; the mean absolute depth
error against the proxy (world units along each unit ray, EG3D's expected depth at its neural rendering
resolution), over the pixels whose ray hits the proxy's head and over all pixels; and view agreement, the
fraction of faces whose beard and age predictions at every side view equal their frontal ones. The ground-truth
row's depth is the proxy's own, so its depth error is reported as not applicable ("-"). The judges saw frontal
faces only: the ground-truth row is their own ceiling at the side views.

    cdiff evaluate ddgi3d --gan cdiff_jax/demo_models/triplane --mapping-heads runs/demo/ddgi3d/mapping/heads \\
        --heads runs/demo/ddgi3d/modulation/heads --out outputs/ddgi3d_eval

writes results.json, results.md and grid.png (per face a row per method: input map, every view, the depth at
the last view, near bright).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax import viz
from cdiff_jax.checkpoint import NotACheckpointError, load_eg3d_generator, load_system
from cdiff_jax.checkpoint import load_config as load_system_config
from cdiff_jax.config import EG3DConfig
from cdiff_jax.data import toy_faces, toy_faces_3d
from cdiff_jax.data.masks import colorize
from cdiff_jax.ddgi.features import check_ddgi_parts
from cdiff_jax.ddgi.gan import frontal_cameras
from cdiff_jax.ddgi.heads import load_heads
from cdiff_jax.evaluation import ddgi_toy
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation import miniature as M
from cdiff_jax.evaluation.metrics import mean_iou
from cdiff_jax.evaluation.paper import write_results
from cdiff_jax.nn.eg3d import orbit_views
from cdiff_jax.progress import bar, configure_logging, log
from cdiff_jax.requests import DEMO_CHECKPOINT

GROUND_TRUTH = "ground truth (toy world)"
CEILING = "tri-plane W+ inversion (ceiling)"
INVERSION_RESOLUTION = 32  # configs/train_demo.py:triplane's triplane_resolution


@dataclasses.dataclass(frozen=True)
class Seen:
    """One row's faces at every view (view 0 frontal)."""

    images: np.ndarray  # uint8 [N, V, 64, 64, 3]
    depth: np.ndarray  # float32 [N, V, r, r, 1]


def view_cameras(side_yaws, pitch: float) -> tuple[np.ndarray, list[str]]:
    """[V, 25] cameras of the toy world's orbit, the frontal one first, then each side yaw (degrees) at `pitch`,
    and the views' names; a view outside the world is a one-line ValueError."""
    if not side_yaws:
        raise ValueError("give at least one side view (a yaw in degrees)")
    bad = [y for y in side_yaws if abs(y) > math.degrees(toy_faces_3d.MAX_YAW)]
    if bad or abs(pitch) > math.degrees(toy_faces_3d.MAX_PITCH):
        raise ValueError(
            f"yaw {bad[0] if bad else side_yaws[0]:g}, pitch {pitch:g} degrees: the toy 3D world "
            f"covers yaw within +-{math.degrees(toy_faces_3d.MAX_YAW):g} and pitch within "
            f"+-{math.degrees(toy_faces_3d.MAX_PITCH):g} degrees"
        )
    cameras = toy_faces_3d.cameras([0.0, *map(math.radians, side_yaws)], [0.0] + [math.radians(pitch)] * len(side_yaws))
    names = ["frontal"] + [f"yaw {y:+g}" + (f" pitch {pitch:+g}" if pitch else "") for y in side_yaws]
    return cameras, names


def check_generator(cfg: EG3DConfig) -> None:
    """ValueError unless the generator renders the judges' 64x64 faces from the toy world's frontal camera."""
    if cfg.img_resolution != toy_faces.IMAGE_SIZE:
        raise ValueError(
            f"the generator makes {cfg.img_resolution}x{cfg.img_resolution} images; the judges take the "
            f"toy world's {toy_faces.IMAGE_SIZE}x{toy_faces.IMAGE_SIZE}"
        )
    if not np.allclose(frontal_cameras(cfg, 1), toy_faces_3d.FRONTAL, atol=1e-5):
        raise ValueError(
            f"the generator's frontal camera (radius {cfg.avg_camera_radius}, pivot "
            f"{cfg.avg_camera_pivot}, field of view {cfg.fov_degrees}) is not the toy 3D world's (radius "
            f"{toy_faces_3d.RADIUS}, pivot {toy_faces_3d.PIVOT}, {toy_faces_3d.FOV_DEGREES}): give one "
            "fitted to the world (configs/toy_eg3d.py)"
        )


def world_views(examples: list[dict], cameras: np.ndarray) -> tuple[Seen, np.ndarray]:
    """The toy world's renders of each face at every camera, and its label maps uint8 [N, V, 64, 64]. Colours are
    rounded (not truncated as a generator's): the frontal view is the 2D toy face to the bit."""
    images, depth, labels = [], [], []
    for e in bar(examples, "ray-casting the toy world", unit="face"):
        seen = toy_faces_3d.render(e["image"] / 127.5 - 1, e["labels"], cameras)
        images.append(np.round((seen["image"] + 1) * 127.5).clip(0, 255).astype(np.uint8))
        depth.append(seen["depth"])
        labels.append(seen["labels"])
    return Seen(np.stack(images), np.stack(depth)), np.stack(labels)


def generator_views(generator, ws: np.ndarray, cameras: np.ndarray, key: jax.Array, batch: int) -> Seen:
    """The tri-plane generator's views of W+ codes [N, num_ws, w_dim] at every camera (the tri-planes once per
    face; every batch and row with the same renderer uniforms)."""
    graphdef, state = nnx.split(generator)
    images, depth = [], []
    for start in bar(range(0, len(ws), batch), "rendering views", unit="batch"):
        seen_images, seen_depth = orbit_views(graphdef, state, jnp.asarray(ws[start : start + batch]), cameras, key)
        images.append(viz.to_uint8(seen_images))
        depth.append(seen_depth)
    return Seen(np.concatenate(images), np.concatenate(depth))


def proxy_depth(cameras: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The proxy's depth [V, r, r] along each camera's rays, and whether each ray hits its head."""
    _, depth, head = toy_faces_3d.cast(cameras, resolution)
    shape = (len(cameras), resolution, resolution)
    return depth.reshape(shape), head.reshape(shape)


def depth_errors(depth: np.ndarray, cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per camera, the mean absolute error of rendered depth [N, V, r, r, 1] against the proxy: over all pixels
    and over the pixels whose ray hits the head."""
    truth, head = proxy_depth(cameras, depth.shape[2])
    error = np.abs(np.asarray(depth)[..., 0] - truth[None])
    return error.mean(axis=(0, 2, 3)), np.array([error[:, v][:, head[v]].mean() for v in range(len(cameras))])


def _predictions(judges, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.asarray(p) for p in J.attribute_predictions(judges, J.from_uint8(images)))


def score(
    judges, seen: Seen, examples: list[dict], world_labels: np.ndarray, names: list[str], cameras: np.ndarray | None
) -> dict:
    """One row's columns: the frontal judges (`miniature.score`), then per side view the parser against the
    world's label maps, the depth error against the proxy seen by `cameras` (None: not applicable) and the
    agreement of the attribute predictions with the frontal ones."""
    row = M.score(judges, seen.images[:, 0], examples, None)
    beard, age = _predictions(judges, seen.images[:, 0])
    errors = None if cameras is None else depth_errors(seen.depth, cameras)
    agree_everywhere = np.ones(len(examples), bool)
    row["views"] = {}
    for v, name in enumerate(names[1:], 1):
        parsed = np.asarray(J.parse(judges, J.from_uint8(seen.images[:, v])))
        side_beard, side_age = _predictions(judges, seen.images[:, v])
        agree = (side_beard == beard) & (side_age == age)
        agree_everywhere &= agree
        view = {
            "parser_accuracy": float(np.mean(parsed == world_labels[:, v])),
            "parser_miou": mean_iou(parsed, world_labels[:, v]),
            "agreement": float(np.mean(agree)),
        }
        if errors is not None:
            view |= {"depth_error_head": float(errors[1][v]), "depth_error_all": float(errors[0][v])}
        row["views"][name] = view
    row["view_agreement"] = float(np.mean(agree_everywhere))
    return row


def run(
    gan_dir,
    mapping_heads_dir,
    heads_dir,
    *,
    checkpoint=DEMO_CHECKPOINT,
    judges_dir=M.DEMO_JUDGES,
    side_yaws=(-20.0, 20.0),
    pitch: float = 0.0,
    count: int = 100,
    steps: int = 50,
    inversion_steps: int = 100,
    inversion_resolution: int | None = INVERSION_RESOLUTION,
    batch: int = 50,
    render_batch: int = 10,
    seed: int = 0,
) -> tuple[dict, dict, list[str]]:
    """(results per row, `Seen` per row, the views' names). Every input is checked before any work."""
    cameras, names = view_cameras(side_yaws, pitch)
    generator = load_eg3d_generator(gan_dir)
    check_generator(generator.cfg)
    heads = {"M": (mapping_heads_dir, load_heads(mapping_heads_dir)), "M + T": (heads_dir, load_heads(heads_dir))}
    system_cfg = load_system_config(checkpoint)
    for directory, step_heads in {h.cfg: (d, h) for d, h in heads.values()}.values():  # each check traces the UNets
        try:
            check_ddgi_parts(system_cfg, generator.cfg, step_heads.cfg)
        except ValueError as err:
            raise ValueError(f"{directory}: {err}") from None
    system, judges = load_system(checkpoint), J.load_judges(judges_dir)
    examples = M.held_out_examples(count)
    key = jax.random.key(seed)
    seen = {}
    seen[GROUND_TRUTH], world_labels = world_views(examples, cameras)
    log.info(
        "W+ inversion of the frontal ground truth (%d steps, rendered at %dx%d)",
        inversion_steps,
        *(2 * [inversion_resolution or generator.cfg.neural_rendering_resolution]),
    )
    ws, _, _ = ddgi_toy.invert(
        generator,
        system.autoencoder,
        seen[GROUND_TRUTH].images[:, 0],
        steps=inversion_steps,
        batch=render_batch,
        key=jax.random.fold_in(key, 1),
        resolution=inversion_resolution,
    )
    seen[CEILING] = generator_views(generator, ws, cameras, key, render_batch)
    log.info("the collaborative sampler's trajectories (%d pairs, %d steps)", len(examples), steps)
    trajectories = ddgi_toy.sample_trajectories(system, examples, steps=steps, batch=batch, seed=seed)
    for name, (_, step_heads) in heads.items():
        log.info("DDGI-3D %s: codes and views", name)
        ws = ddgi_toy.codes(
            system, step_heads, generator.mapping.w_avg[...], examples, trajectories, steps, render_batch
        )
        seen[f"DDGI-3D {name}, step {steps}/{steps}"] = generator_views(generator, ws, cameras, key, render_batch)
    results = {
        row: score(judges, row_seen, examples, world_labels, names, None if row == GROUND_TRUTH else cameras)
        for row, row_seen in seen.items()
    }
    return results, seen, names


def table(results: dict) -> str:
    """The results as a Markdown table."""
    names = list(next(iter(results.values()))["views"])
    header = ["row", "mask accuracy", "mIoU", "beard accuracy", "age accuracy"]
    for name in names:
        header += [f"{name}: parser accuracy", f"{name}: mIoU", f"{name}: depth error, head / all"]
    header.append("view agreement")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, r in results.items():
        cells = [row, *(f"{r[k]:.3f}" for k in ("mask_accuracy", "mask_miou", "beard_accuracy", "age_accuracy"))]
        for view in r["views"].values():
            depth = (
                f"{view['depth_error_head']:.4f} / {view['depth_error_all']:.4f}" if "depth_error_head" in view else "-"
            )
            cells += [f"{view['parser_accuracy']:.3f}", f"{view['parser_miou']:.3f}", depth]
        cells.append(f"{r['view_agreement']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(row: str) -> str:
    """A row label of a few characters: "truth", "inversion", "M@50", "M+T@50"."""
    if row in (GROUND_TRUTH, CEILING):
        return "truth" if row == GROUND_TRUTH else "inversion"
    heads, step = row.removeprefix("DDGI-3D ").split(", step ")
    return f"{heads.replace(' ', '')}@{step.split('/')[0]}"


def picture(examples: list[dict], seen: dict, names: list[str], faces: int = 4) -> np.ndarray:
    """Per face a row per method: input map | every view | the depth at the last view (near bright, the
    world's depth range)."""
    truth = seen[GROUND_TRUTH].depth
    near, far = float(truth.min()), float(truth.max())
    tiles, labels = [], []
    for i in range(min(faces, len(examples))):
        for row, row_seen in seen.items():
            depth = viz.depth_picture(row_seen.depth[i, -1], near, far)
            scale = row_seen.images.shape[2] // depth.shape[0]
            tiles.append(
                [
                    colorize(examples[i]["labels"]),
                    *row_seen.images[i],
                    depth.repeat(scale, axis=0).repeat(scale, axis=1),
                ]
            )
            labels.append(_short(row))
    return viz.grid(np.stack(tiles), col_labels=["map", *names, f"depth {names[-1].split()[1]}"], row_labels=labels)


def _degrees(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="collaborative system (default: the demo)")
    p.add_argument(
        "--gan",
        required=True,
        help="the tri-plane generator the heads drive, fitted to the toy world "
        "(the demo's: cdiff_jax/demo_models/triplane)",
    )
    p.add_argument(
        "--mapping-heads",
        required=True,
        help="the ddgi_mapping stage's heads, M only (the demo's ddgi3d_mapping: runs/demo/ddgi3d/mapping/heads)",
    )
    p.add_argument(
        "--heads",
        required=True,
        help="the ddgi_modulation stage's heads, M + T (the demo's "
        "ddgi3d_modulation: runs/demo/ddgi3d/modulation/heads)",
    )
    p.add_argument("--judges", default=str(M.DEMO_JUDGES), help="judges directory (default: the shipped ones)")
    p.add_argument("--count", type=int, default=100, help="held-out (mask, caption) pairs")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (the heads read the last)")
    p.add_argument(
        "--yaw",
        type=_degrees,
        default=[20.0],
        help="side views, degrees: each Y of `Y[,Y...]` seen at -Y and +Y (default 20)",
    )
    p.add_argument("--pitch", type=float, default=0.0, help="the side views' pitch, degrees (default 0)")
    p.add_argument("--inversion-steps", type=int, default=100, help="Adam steps of the W+ inversion ceiling")
    p.add_argument(
        "--inversion-resolution",
        type=int,
        default=INVERSION_RESOLUTION,
        help=f"neural rendering resolution of the inversion, a divisor of 64 (default {INVERSION_RESOLUTION})",
    )
    p.add_argument("--batch", type=int, default=50, help="sampler batch (50: the 2D evaluation's trajectories)")
    p.add_argument("--render-batch", type=int, default=10, help="faces per rendering and inversion call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/ddgi3d_eval", help="directory to write (default outputs/ddgi3d_eval)")
    args = p.parse_args(argv)
    configure_logging()
    if not 1 <= args.count <= M.TEST_SIZE:
        p.error(f"--count must be in 1..{M.TEST_SIZE} (the held-out split)")
    if args.steps < 1 or args.inversion_steps < 1 or args.batch < 1 or args.render_batch < 1:
        p.error("--steps, --inversion-steps, --batch and --render-batch must be at least 1")
    if any(y <= 0 for y in args.yaw):
        p.error("--yaw takes positive angles: each is seen at -Y and +Y")
    if not 1 <= args.inversion_resolution <= toy_faces.IMAGE_SIZE or toy_faces.IMAGE_SIZE % args.inversion_resolution:
        p.error(f"--inversion-resolution {args.inversion_resolution}: give a divisor of {toy_faces.IMAGE_SIZE}")
    side_yaws = [sign * y for y in args.yaw for sign in (-1, 1)]
    try:
        results, seen, names = run(
            args.gan,
            args.mapping_heads,
            args.heads,
            checkpoint=args.checkpoint,
            judges_dir=args.judges,
            side_yaws=side_yaws,
            pitch=args.pitch,
            count=args.count,
            steps=args.steps,
            inversion_steps=args.inversion_steps,
            inversion_resolution=args.inversion_resolution,
            batch=args.batch,
            render_batch=args.render_batch,
            seed=args.seed,
        )
    except (FileNotFoundError, NotACheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = {
        k: getattr(args, k)
        for k in (
            "checkpoint",
            "gan",
            "mapping_heads",
            "heads",
            "judges",
            "count",
            "steps",
            "pitch",
            "inversion_steps",
            "inversion_resolution",
            "seed",
        )
    }
    write_results(
        pathlib.Path(args.out),
        {**settings, "views": names},
        results,
        table(results),
        picture(M.held_out_examples(min(4, args.count)), seen, names),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

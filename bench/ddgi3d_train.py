"""DDGI-3D's training cost on this machine: seconds per step of the ddgi3d_mapping and ddgi3d_modulation stages
(configs/train_demo.py) on a fresh toy tri-plane generator (configs/toy_eg3d.py; speed does not depend on its
weights) and the demo diffusion system, and the demo run's projected time on the machine when idle. The stages
read a trajectory cache of the real one's shapes (11 kept steps), sampled here from toy faces by a short sampler
into a temporary directory.

A busy machine is measured two ways around each stage: a float32 4096^3 matmul (bench/timing.py) just before and
after, whose ratio to the idle machine's (`--idle-gflops`) scales the time; and the 2D ddgi_mapping stage (the
shipped toy StyleGAN2) in the same run, whose idle time was measured alone (`--idle-2d`, BENCHMARKS.md "DDGI
training"): the 3D/2D ratio times that.

    python bench/ddgi3d_train.py [--batch 16 8] [--steps 4] [--idle-gflops 280] [--idle-2d 0.48]
"""

import argparse
import pathlib
import statistics
import tempfile
import time

import jax
from flax import nnx
from timing import matmul_flops_per_second

from cdiff_jax.checkpoint import load_system, save_generator
from cdiff_jax.config import load_config
from cdiff_jax.data.masks import resize_label_map
from cdiff_jax.data.toy_faces import make_example
from cdiff_jax.ddgi.trajectories import TrajectorySettings, build_cache
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.parallel import data_mesh, global_batch
from cdiff_jax.train.stages import ddgi_stage

DEMO = "configs/train_demo.py"
GAN_2D = "cdiff_jax/demo_models/gan"  # the toy StyleGAN2 the 2D stages drive
KEPT = tuple(range(1, 12))  # as many x_t per example as the demo cache's 11


def timed(cfg, steps: int):
    """(median seconds per step over `steps` steps after the compiling one, the matmul GFLOP/s around them,
    the stage, its state)."""
    mesh = data_mesh()
    stage = ddgi_stage(cfg, mesh)
    batch = next(iter(stage.loader))
    batches = global_batch({name: value[None] for name, value in batch.items()}, mesh, batch_axis=1)
    state, _ = stage.run(stage.state, batches)
    jax.block_until_ready(state)
    gflops, times = [matmul_flops_per_second() / 1e9], []
    for _ in range(steps):
        start = time.perf_counter()
        state, _ = stage.run(state, batches)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    gflops.append(matmul_flops_per_second() / 1e9)
    print(f"  steps {', '.join(f'{t:.2f}' for t in times)} s; matmul {gflops[0]:.0f} then {gflops[1]:.0f} GFLOP/s")
    return statistics.median(times), statistics.mean(gflops), stage, state


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[16])
    p.add_argument("--steps", type=int, default=4, help="timed steps per stage after the compiling one")
    p.add_argument(
        "--idle-gflops",
        type=float,
        default=280.0,
        help="the idle machine's matmul baseline (BENCHMARKS.md: 250-336 GFLOP/s on quiet runs)",
    )
    p.add_argument("--idle-2d", type=float, default=0.48, help="seconds per 2D ddgi_mapping step at batch 16, idle")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddgi3d_bench_") as tmp:
        run(pathlib.Path(tmp), args)


def run(root: pathlib.Path, args):
    save_generator(root / "gan", TriPlaneGenerator(load_config("toy_eg3d.py"), rngs=nnx.Rngs(0)))
    faces = [make_example(i) for i in range(max(16, *args.batch))]
    examples = [{"image": f["image"], "mask": resize_label_map(f["labels"]), "caption": f["caption"]} for f in faces]
    build_cache(
        load_system(load_config(f"{DEMO}:ddgi3d_mapping").system),
        examples,
        root / "cache",
        TrajectorySettings(steps=len(KEPT), kept=KEPT, batch=len(examples)),
    )
    print("2D ddgi_mapping, batch 16 (the reference):")
    reference, reference_gflops, *_ = timed(
        load_config(f"{DEMO}:ddgi_mapping").replace(gan=GAN_2D, data_dir=str(root / "cache")), args.steps
    )
    for batch in args.batch:
        total = {"measured": 0.0, "by matmul": 0.0, "by 2D": 0.0}
        for name in ("ddgi3d_mapping", "ddgi3d_modulation"):
            cfg = load_config(f"{DEMO}:{name}").replace(
                gan=str(root / "gan"), data_dir=str(root / "cache"), global_batch=batch
            )
            if name == "ddgi3d_modulation":
                cfg = cfg.replace(init_from=(("heads", str(root / f"mapping{batch}/heads")),))
            print(f"{name}, batch {batch}:")
            seconds, gflops, stage, state = timed(cfg, args.steps)
            if name == "ddgi3d_mapping":
                stage.export(state.params, root / f"mapping{batch}")
            ratio = seconds * gflops / reference_gflops / reference  # to the 2D step, at equal matmul speed
            idle = {
                "measured": seconds,
                "by matmul": seconds * gflops / args.idle_gflops,
                "by 2D": ratio * args.idle_2d,
            }
            print(
                f"  {seconds:.2f} s/step here; idle: {idle['by matmul']:.2f} s (matmul), {idle['by 2D']:.2f} s "
                f"({ratio:.1f}x the 2D step)"
            )
            for way in total:
                total[way] += idle[way] * cfg.steps
        print(f"batch {batch}, the demo's steps: " + ", ".join(f"{t / 3600:.2f} h {way}" for way, t in total.items()))


if __name__ == "__main__":
    main()

"""Compiled memory of one training step of each released stage: what fits which accelerator.

    python bench/train_memory.py                                # every recipe, batch 1 2 4 8, both remat settings
    python bench/train_memory.py --recipes collab_512 --batches 1 2 --remat none full --sharding fsdp

Nothing runs and no weight is made: each step is lowered from shapes (`jax.ShapeDtypeStruct`) over 8
simulated devices and compiled, and XLA's memory analysis of the compiled program gives the bytes per device:
arguments (parameters, optimizer state, batch) + outputs - donated (aliased) buffers + temporaries. `batch` is
per device (the global batch is 8 times it). Sharding "replicated" keeps every parameter on every device (the
trainer's default), "fsdp" splits tensors of at least 2^18 elements over the devices (`fsdp_min_size`).
The networks use the kernel forms accelerators get (plain convolutions, `jax.nn.dot_product_attention`), so
the figures are XLA:CPU's schedule of the accelerator program: a planning figure, not a GPU or TPU measurement.
Results are appended to --out (JSON lines; by default bench/results/train_memory.jsonl, which is committed) as they
come and already measured cases are skipped, so an interrupted run resumes, on another machine too: the figures
depend on the jax release (each row records it), not on the machine, and the table's 128 cases are more compiling
than one working session holds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from cdiff_jax.conditions import null_condition  # noqa: E402
from cdiff_jax.config import load_config  # noqa: E402
from cdiff_jax.configs import train_released  # noqa: E402
from cdiff_jax.diffusion.schedule import make_schedule  # noqa: E402
from cdiff_jax.modalities import KINDS  # noqa: E402
from cdiff_jax.nn.discriminator import DiscriminatorConfig, PatchDiscriminator  # noqa: E402
from cdiff_jax.nn.kernels import PLAIN_FORMS, forced_kernel_forms  # noqa: E402
from cdiff_jax.nn.lpips import LPIPS  # noqa: E402
from cdiff_jax.nn.remat import POLICIES, set_policy  # noqa: E402
from cdiff_jax.optimization import adam, loop_policy  # noqa: E402
from cdiff_jax.parallel import DATA, data_mesh, param_sharding  # noqa: E402
from cdiff_jax.system import abstract_system  # noqa: E402
from cdiff_jax.train import autoencoder_step  # noqa: E402
from cdiff_jax.train.step import StepSettings, _train_steps, init_train_state, trainable_filter, trainable_prefixes  # noqa: E402,E501

RECIPES = [
    f"{stage}_{size}" for size in (256, 512) for stage in ("autoencoder", "expert_text", "expert_mask", "collab")
]
RESULTS = pathlib.Path(__file__).parent / "results" / "train_memory.jsonl"
FSDP_MIN_SIZE = 2**18
GIB = 2**30


def abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def placed(tree, mesh, sharding: str):
    rule = param_sharding(tree, mesh, FSDP_MIN_SIZE if sharding == "fsdp" else None)
    return abstract(tree, rule)


def batch_shapes(system_cfg, stage: str, global_batch: int, resolution: int, mesh) -> dict:
    """[1 step, global batch, ...] shapes of a pipeline batch, split over the devices."""
    split = NamedSharding(mesh, P(None, DATA))
    shapes = {"image": ((resolution, resolution, 3), jnp.float32)}
    if stage != "autoencoder":
        for modality in system_cfg.modalities.values():
            example = null_condition(modality)[0]  # a parsed condition of the modality: its shape and dtype
            shapes[KINDS[modality.kind].batch_key] = (example.shape, example.dtype)
    return {
        k: jax.ShapeDtypeStruct((1, global_batch, *shape), dtype, sharding=split)
        for k, (shape, dtype) in shapes.items()
    }


def compiled_step(recipe: str, batch: int, remat: str, sharding: str, mesh):
    cfg = train_released.get_config(recipe)
    with forced_kernel_forms(PLAIN_FORMS):
        system = abstract_system(load_config(cfg.system))
    set_policy(system, remat)
    prefixes = trainable_prefixes(cfg.stage, system.cfg, cfg.modality)
    graphdef, params, frozen = nnx.split(system, trainable_filter(prefixes), ...)
    global_batch = batch * mesh.size
    batches = batch_shapes(system.cfg, cfg.stage, global_batch, cfg.resolution, mesh)
    key = jax.random.key(0)
    if cfg.stage == "autoencoder":
        tx = adam(cfg.learning_rate, betas=autoencoder_step.ADAM_BETAS)
        disc = nnx.eval_shape(lambda: PatchDiscriminator(DiscriminatorConfig(), rngs=nnx.Rngs(0)))
        disc_graphdef, disc_params = nnx.split(disc)
        lpips_graphdef, lpips_state = nnx.split(nnx.eval_shape(lambda: LPIPS(rngs=nnx.Rngs(0))))
        state = jax.eval_shape(lambda p, d: autoencoder_step.init_autoencoder_state(p, tx, d, tx), params, disc_params)
        objective = autoencoder_step.AutoencoderObjective(kl_weight=cfg.kl_weight, disc_start=0)
        return autoencoder_step._autoencoder_train_steps.lower(
            graphdef,
            placed(frozen, mesh, sharding),
            placed(state, mesh, sharding),
            batches["image"],
            key,
            tx,
            disc_graphdef,
            tx,
            (lpips_graphdef, placed(lpips_state, mesh, "replicated")),
            objective,
            True,
            loop_policy(),
        ).compile()
    tx = adam(cfg.learning_rate, weight_decay=cfg.weight_decay)
    state = jax.eval_shape(lambda p: init_train_state(p, tx), params)
    schedule = jax.eval_shape(lambda: make_schedule(system.cfg.schedule))
    return _train_steps.lower(
        graphdef,
        placed(frozen, mesh, sharding),
        placed(state, mesh, sharding),
        batches,
        placed(schedule, mesh, "replicated"),
        key,
        tx,
        StepSettings(),
        loop_policy(),
    ).compile()


def measure(recipe: str, batch: int, remat: str, sharding: str, mesh) -> dict:
    start = time.perf_counter()
    memory = compiled_step(recipe, batch, remat, sharding, mesh).memory_analysis()
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    return {
        "recipe": recipe,
        "batch_per_device": batch,
        "remat": remat,
        "sharding": sharding,
        "arguments_gib": memory.argument_size_in_bytes / GIB,
        "temporaries_gib": memory.temp_size_in_bytes / GIB,
        "total_gib": total / GIB,
        "compile_s": round(time.perf_counter() - start, 1),
        "jax": jax.__version__,  # XLA's schedule, and so the figure, may change between releases
    }


def table(rows: list[dict]) -> str:
    """Markdown: per recipe and batch, the total GiB per device of each (sharding, remat) and what it fits."""
    settings = sorted({(r["sharding"], r["remat"]) for r in rows})
    lines = [
        "| recipe | batch/device | " + " | ".join(f"{s}, remat {m}" for s, m in settings) + " |",
        "|---|---|" + "---|" * len(settings),
    ]
    by_case = {(r["recipe"], r["batch_per_device"], r["sharding"], r["remat"]): r["total_gib"] for r in rows}
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for batch in sorted({r["batch_per_device"] for r in rows if r["recipe"] == recipe}):
            cells = []
            for s, m in settings:
                gib = by_case.get((recipe, batch, s, m))
                fits = "" if gib is None else " (16)" if gib <= 16 else " (32)" if gib <= 32 else " (-)"
                cells.append("" if gib is None else f"{gib:.1f}{fits}")
            lines.append(f"| {recipe} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--remat", nargs="+", default=["none", "full"], choices=list(POLICIES))
    p.add_argument("--sharding", nargs="+", default=["replicated", "fsdp"], choices=["replicated", "fsdp"])
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = p.parse_args()
    mesh = data_mesh()
    if mesh.size != 8:
        raise SystemExit(f"expected 8 simulated devices, got {mesh.size}: run on the CPU backend (JAX_PLATFORMS=cpu)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["recipe"], r["batch_per_device"], r["remat"], r["sharding"]) for r in rows}
    cases = [
        (r, b, m, s)
        for r in args.recipes
        for s in args.sharding
        for m in args.remat
        for b in args.batches
        if (r, b, m, s) not in done
    ]
    print(f"{len(cases)} cases to compile ({len(done)} already in {args.out})", flush=True)
    for i, case in enumerate(cases, 1):
        row = measure(*case, mesh)
        jax.clear_caches()  # each compiled step holds memory maps; kept, they reach vm.max_map_count within a run
        rows.append(row)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"[{i}/{len(cases)}] {row['recipe']} batch {row['batch_per_device']} {row['sharding']} remat "
            f"{row['remat']}: {row['total_gib']:.2f} GiB per device (temporaries {row['temporaries_gib']:.2f}), "
            f"compiled in {row['compile_s']} s",
            flush=True,
        )
    print("\nGiB per device; (16) fits a 16 GB accelerator, (32) a 32 GB one, (-) neither.")
    print(table(rows))


if __name__ == "__main__":
    main()

"""DDGI on the toy world: does the GAN's face keep what the diffusion sample shows, and look more real?

The held-out (label map, caption) pairs of the miniature evaluation are sampled once by the collaborative
system with the released re-weighting (the same noise as there, so the I^d_0 row equals the miniature
table's "collaborative (released)" row); the trajectory is recorded, and each DDGI variant reads it at its
step, maps the UNet features to a W+ code and renders it with the GAN. Rows:

* real images, and the GAN's W+ inversion of each (codes optimised against the real face with the DDGI
  training term: the best any head could do with this GAN);
* I^d_0, the diffusion system's own decoded sample;
* DDGI with M only (the mapping stage's heads) and with M + T (the modulation stage's), read at the
  last step and at steps 1 and 10 of 50; optionally heads trained without attention gating.

Columns: the judges' mask accuracy and mIoU against the input map, beard and age accuracy, the Frechet
distance to the real held-out faces, SSIM and mean squared error to the ground truth, and seconds per image
(the sampler's steps up to the step read, the heads and G; the sampler's time is prorated per step).

    cdiff evaluate ddgi --gan runs/demo/gan/generator \\
        --mapping-heads runs/demo/ddgi/mapping/heads --heads runs/demo/ddgi/modulation/heads --out outputs/ddgi_eval
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cdiff_jax import viz
from cdiff_jax.checkpoint import NotACheckpointError, load_generator, load_system
from cdiff_jax.data.masks import colorize
from cdiff_jax.ddgi.features import read_features
from cdiff_jax.ddgi.gan import gan_images
from cdiff_jax.ddgi.heads import load_heads
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation import miniature as M
from cdiff_jax.evaluation.frechet import gaussian_statistics
from cdiff_jax.evaluation.paper import write_results
from cdiff_jax.evaluation.ssim import ssim
from cdiff_jax.optimization import loop_policy, run_steps
from cdiff_jax.progress import bar, configure_logging, log
from cdiff_jax.requests import DEMO_CHECKPOINT
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.train.ddgi_step import perceptual_distance

PERCEPTUAL_WEIGHT = 0.8  # the inversion's term is the DDGI training term (L2 1.0 + 0.8 x perceptual)


@dataclasses.dataclass(frozen=True)
class Trajectories:
    diffusion_images: np.ndarray  # I^d_0 uint8 [N, R, R, 3]
    x_t: np.ndarray  # the input of every sampler step [N, steps, h, w, c]
    timesteps: np.ndarray  # [steps]
    seconds_per_image: float  # the whole sampler, decoding included, compilation excluded


def sample_trajectories(system, examples: list[dict], *, steps: int, batch: int, seed: int) -> Trajectories:
    """The collaborative system's released-rule samples of the examples, with every step's x_t."""
    graphdef, state = nnx.split(system)
    settings = SamplerSettings(steps=steps, record=True)
    noise = M.starting_noise(system.cfg, len(examples), seed)
    images, x_t, timesteps, seconds = [], [], None, 0.0
    for start in bar(range(0, len(examples), batch), "sampling", unit="batch"):
        chunk = examples[start : start + batch]
        args = (
            graphdef,
            state,
            M.example_conditions(system.cfg, ("mask", "text"), chunk),
            noise[start : start + len(chunk)],
            M.step_noise_key(seed, start),
            settings,
        )
        if start == 0:
            jax.block_until_ready(sample(*args))  # compile outside the timing
        began = time.perf_counter()
        result = jax.block_until_ready(sample(*args))
        seconds += time.perf_counter() - began
        images.append(viz.to_uint8(np.asarray(result.images)))
        x_t.append(np.asarray(result.trajectory.x_t).swapaxes(0, 1))
        timesteps = np.asarray(result.trajectory.timesteps)
    return Trajectories(np.concatenate(images), np.concatenate(x_t), timesteps, seconds / len(examples))


@jax.jit(static_argnames=("system_graphdef", "heads_graphdef", "experts"))
def _codes(system_graphdef, system_state, heads_graphdef, heads_state, w_avg, x_t, t, conditions, experts):
    features = read_features(
        nnx.merge(system_graphdef, system_state), x_t, jnp.full((x_t.shape[0],), t), conditions, experts
    )
    return nnx.merge(heads_graphdef, heads_state)(
        features.middle, features.decoder, features.attention, features.content, w_avg
    ).w


@jax.jit(static_argnames=("system_graphdef", "heads_graphdef", "gan_graphdef", "experts"))
def _render(
    system_graphdef, system_state, heads_graphdef, heads_state, gan_graphdef, gan_state, x_t, t, conditions, experts
):
    generator = nnx.merge(gan_graphdef, gan_state)
    ws = _codes(
        system_graphdef,
        system_state,
        heads_graphdef,
        heads_state,
        generator.mapping.w_avg[...],
        x_t,
        t,
        conditions,
        experts,
    )
    return generator.synthesis(ws, generator.synthesis.noises(x_t.shape[0], "const", None, None))


def _readings(system, heads, examples: list[dict], trajectories: Trajectories, at_step: int, batch: int):
    """Per batch of examples, what the heads read: x_t at sampler step `at_step` (1-based), its timestep and the
    conditions of the heads' experts."""
    t = trajectories.timesteps[at_step - 1]
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        yield (
            trajectories.x_t[start : start + len(chunk), at_step - 1],
            t,
            M.example_conditions(system.cfg, heads.cfg.experts, chunk),
        )


def render(
    system, heads, generator, examples: list[dict], trajectories: Trajectories, at_step: int, batch: int
) -> tuple[np.ndarray, float]:
    """DDGI's uint8 images of the examples read at sampler step `at_step` (1-based), and the seconds per
    image of the heads and G (compilation excluded)."""
    parts = (*nnx.split(system), *nnx.split(heads), *nnx.split(generator))
    out, seconds = [], 0.0
    for args in _readings(system, heads, examples, trajectories, at_step, batch):
        args = (*parts, *args, heads.cfg.experts)
        if not out:
            jax.block_until_ready(_render(*args))
        began = time.perf_counter()
        images = jax.block_until_ready(_render(*args))
        seconds += time.perf_counter() - began
        out.append(viz.to_uint8(np.asarray(images)))
    return np.concatenate(out), seconds / len(examples)


def codes(
    system, heads, w_avg, examples: list[dict], trajectories: Trajectories, at_step: int, batch: int
) -> np.ndarray:
    """DDGI's W+ codes [N, num_ws, w_dim] of the examples read at sampler step `at_step` (1-based), for a
    generator whose w_avg is `w_avg` (EG3D's views are rendered from them)."""
    parts = (*nnx.split(system), *nnx.split(heads), w_avg)
    return np.concatenate(
        [
            np.asarray(_codes(*parts, *args, heads.cfg.experts))
            for args in _readings(system, heads, examples, trajectories, at_step, batch)
        ]
    )


def _area_average(images: jax.Array, size: int) -> jax.Array:
    """[B, R, R, C] -> [B, size, size, C], each pixel the mean of its R/size x R/size block."""
    batch, resolution, _, channels = images.shape
    f = resolution // size
    return images.reshape(batch, size, f, size, f, channels).mean(axis=(2, 4))


@jax.jit(static_argnames=("gan_graphdef", "ae_graphdef", "tx", "policy", "resolution"))
def _invert_steps(gan_graphdef, gan_state, ae_graphdef, ae_state, ws, opt_state, target, key, tx, policy, resolution):
    """One call's Adam steps of the inversion, and G's images of the codes after them. EG3D draws step n's
    uniforms from fold_in(key, n) and renders at `resolution`, the targets area-averaged to its images' size."""
    generator, autoencoder = nnx.merge(gan_graphdef, gan_state), nnx.merge(ae_graphdef, ae_state)

    def loss_fn(w, k):
        image = gan_images(generator, w, k, resolution=resolution)
        goal = target if image.shape == target.shape else _area_average(target, image.shape[1])
        return jnp.mean(jnp.square(image - goal)) + PERCEPTUAL_WEIGHT * perceptual_distance(autoencoder, image, goal)

    def step(carry, n):
        w, opt = carry
        loss, grad = jax.value_and_grad(loss_fn)(w, None if key is None else jax.random.fold_in(key, n))
        updates, opt = tx.update(grad, opt, w)
        return (optax.apply_updates(w, updates), opt), loss, (loss, grad)

    (ws, opt_state), _, _ = run_steps(step, (ws, opt_state), jnp.arange(policy.edit_steps_per_call), policy)
    return ws, opt_state, gan_images(generator, ws, key, resolution=resolution)


def invert(
    generator,
    autoencoder,
    targets: np.ndarray,
    *,
    steps: int,
    learning_rate: float = 0.05,
    batch: int = 50,
    key: jax.Array | None = None,
    resolution: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """W+ codes optimised (Adam, from w_avg) against each uint8 target, uint8 G(w) of them, and seconds per
    image. EG3D renders at its frontal camera and neural `resolution` (default its own; a lower one is a
    cheaper inversion), its renderer's uniforms drawn afresh at every step from `key`."""
    policy = loop_policy()
    tx = optax.adam(learning_rate)
    parts = (*nnx.split(generator), *nnx.split(autoencoder))
    cfg = generator.cfg
    found, out, began = [], [], time.perf_counter()
    for start in bar(range(0, len(targets), batch), "inverting", unit="batch"):
        target = J.from_uint8(targets[start : start + batch])
        ws = jnp.broadcast_to(generator.mapping.w_avg[...], (target.shape[0], cfg.num_ws, cfg.w_dim))
        # committed to the device, as the steps' outputs are: an uncommitted start compiles the steps twice
        ws, opt_state = jax.device_put((ws, tx.init(ws)), jax.devices()[0])
        for call in range(-(-steps // policy.edit_steps_per_call)):
            call_key = None if key is None else jax.random.fold_in(key, call)
            ws, opt_state, images = _invert_steps(*parts, ws, opt_state, target, call_key, tx, policy, resolution)
        found.append(np.asarray(ws))
        out.append(viz.to_uint8(np.asarray(images)))
    return np.concatenate(found), np.concatenate(out), (time.perf_counter() - began) / len(targets)


def fidelity(images: np.ndarray, real: np.ndarray) -> dict:
    """SSIM and mean squared error (images in [-1, 1]) to the ground-truth faces."""
    x, y = J.from_uint8(images), J.from_uint8(real)
    return {"ssim": float(jnp.mean(ssim(x, y))), "l2": float(jnp.mean(jnp.square(x - y)))}


def run(
    gan_dir,
    mapping_heads_dir,
    heads_dir,
    *,
    checkpoint=DEMO_CHECKPOINT,
    judges_dir=M.DEMO_JUDGES,
    ungated_heads_dir=None,
    count: int = 200,
    steps: int = 50,
    inversion_steps: int = 200,
    batch: int = 50,
    seed: int = 0,
) -> tuple[dict, dict]:
    """(results per row, uint8 images per row)."""
    system, generator = load_system(checkpoint), load_generator(gan_dir)
    heads = {"M": load_heads(mapping_heads_dir), "M + T": load_heads(heads_dir)}
    if ungated_heads_dir is not None:
        heads["M + T, no attention gating"] = load_heads(ungated_heads_dir)
    judges = J.load_judges(judges_dir)
    examples = M.held_out_examples(count)
    real = np.stack([e["image"] for e in examples])
    real_stats = gaussian_statistics(np.asarray(J.features(judges, J.from_uint8(real))))
    images, seconds = {"real images": real}, {"real images": None}
    log.info("W+ inversion of the real faces (%d steps)", inversion_steps)
    _, images["GAN W+ inversion (ceiling)"], seconds["GAN W+ inversion (ceiling)"] = invert(
        generator, system.autoencoder, real, steps=inversion_steps, batch=batch
    )
    trajectories = sample_trajectories(system, examples, steps=steps, batch=batch, seed=seed)
    images["diffusion I^d_0"] = trajectories.diffusion_images
    seconds["diffusion I^d_0"] = trajectories.seconds_per_image
    per_step = trajectories.seconds_per_image / steps  # decoding included: an upper bound per step
    for name, step_heads in heads.items():
        for at_step in sorted({1, 10, steps}) if name == "M + T" else (steps,):
            row = f"DDGI {name}, step {at_step}/{steps}"
            images[row], head_seconds = render(system, step_heads, generator, examples, trajectories, at_step, batch)
            seconds[row] = per_step * at_step + head_seconds
    results = {}
    for row, row_images in images.items():
        results[row] = M.score(judges, row_images, examples, None if row == "real images" else real_stats)
        results[row].update(fidelity(row_images, real), seconds_per_image=seconds[row])
    return results, images


def table(results: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        "| row | mask accuracy | mIoU | beard accuracy | age accuracy | Frechet distance | SSIM | L2 | s/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        frechet = f"{r['frechet']:.2f}" if "frechet" in r else "-"
        secs = f"{r['seconds_per_image']:.4f}" if r["seconds_per_image"] is not None else "-"
        lines.append(
            f"| {name} | {r['mask_accuracy']:.3f} | {r['mask_miou']:.3f} | {r['beard_accuracy']:.3f} | "
            f"{r['age_accuracy']:.3f} | {frechet} | {r['ssim']:.3f} | {r['l2']:.4f} | {secs} |"
        )
    return "\n".join(lines)


def _short(row: str) -> str:
    """A column label that fits a 64-pixel tile: "M+T@10", "ungated@50", "inversion"."""
    fixed = {"real images": "real", "GAN W+ inversion (ceiling)": "inversion", "diffusion I^d_0": "I^d_0"}
    if row in fixed:
        return fixed[row]
    heads, step = row.removeprefix("DDGI ").split(", step ")
    name = "ungated" if "no attention gating" in heads else heads.replace(" ", "")
    return f"{name}@{step.split('/')[0]}"


def picture(examples: list[dict], images: dict, rows: int = 8) -> np.ndarray:
    """Rows of mask | each row's image."""
    rows = min(rows, len(examples))
    columns = [np.stack([colorize(e["labels"]) for e in examples[:rows]])] + [im[:rows] for im in images.values()]
    labels = ["mask"] + [_short(name) for name in images]
    return viz.grid(np.stack(columns, axis=1), col_labels=labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="collaborative system (default: the demo)")
    p.add_argument("--gan", required=True, help="the generator the heads drive")
    p.add_argument("--mapping-heads", required=True, help="the ddgi_mapping stage's heads (M only)")
    p.add_argument("--heads", required=True, help="the ddgi_modulation stage's heads (M + T)")
    p.add_argument("--ungated-heads", help="modulation heads trained with ddgi_attention_gating=False")
    p.add_argument("--judges", default=str(M.DEMO_JUDGES), help="judges directory (default: the shipped ones)")
    p.add_argument("--count", type=int, default=200, help="held-out (mask, caption) pairs")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--inversion-steps", type=int, default=200, help="Adam steps of the W+ inversion ceiling")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/ddgi_eval")
    args = p.parse_args(argv)
    configure_logging()
    if not 1 <= args.count <= M.TEST_SIZE:
        p.error(f"--count must be in 1..{M.TEST_SIZE} (the held-out split)")
    if args.steps < 10 or args.inversion_steps < 1:
        p.error("--steps must be at least 10 (rows read steps 1, 10 and the last) and --inversion-steps at least 1")
    try:
        results, images = run(
            args.gan,
            args.mapping_heads,
            args.heads,
            checkpoint=args.checkpoint,
            judges_dir=args.judges,
            ungated_heads_dir=args.ungated_heads,
            count=args.count,
            steps=args.steps,
            inversion_steps=args.inversion_steps,
            batch=args.batch,
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
            "ungated_heads",
            "judges",
            "count",
            "steps",
            "inversion_steps",
            "seed",
        )
    }
    write_results(
        pathlib.Path(args.out),
        settings,
        results,
        table(results),
        picture(M.held_out_examples(min(8, args.count)), images),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

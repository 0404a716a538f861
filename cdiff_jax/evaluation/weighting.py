"""Which influence maps does the training loss ask for? A diagnostic for the dynamic diffusers.

The diffusers are trained to minimise the eps error of the weighted sum of two experts. Whether
that objective rewards maps that follow the face (the mask expert where the layout is decided,
the text expert where the caption is) is a property of the experts, measurable without training
anything: noise held-out latents to a given t, take each expert's eps error, and fit in closed form
the weight on the first expert that minimises the error of the combination:

* one weight per t for every pixel (the best constant map), and
* one weight per t and face part of the label map (the best map that follows the layout), and
* one weight per t where the caption shows (beard, grey hair, wrinkles: the pixels that change when
  the toy face is re-rendered beardless at the youngest age) and one elsewhere,

each fitted on the first half of the examples and scored on the second. If a region-wise fit is no
better than the constant one, following those regions gains the loss nothing, and well-trained
diffusers will learn a near-constant map; the learned maps are scored beside the fits.

    python -m cdiff_jax.evaluation.weighting --count 128

prints the tables (and writes them with the numbers as JSON to --out, if given).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax import conditions as cond
from cdiff_jax.checkpoint import load_system
from cdiff_jax.data.masks import CLASS_NAMES
from cdiff_jax.data.toy_faces import make_example
from cdiff_jax.diffusion.denoiser import encode_conditions, predict
from cdiff_jax.diffusion.schedule import make_schedule, q_sample
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation.miniature import TEST_SIZE, held_out_examples
from cdiff_jax.latents import latent_shape
from cdiff_jax.noise import normal
from cdiff_jax.requests import DEMO_CHECKPOINT

# The noise of batch i at timestep t comes from stream i * STREAMS_PER_BATCH + t: more streams per
# batch than timesteps, so no two (batch, timestep) pairs share one.
STREAMS_PER_BATCH = 1000

# Parts of the face with one fitted weight each; together they cover the 19 CelebAMask-HQ classes.
REGIONS = {
    "background": ("background",),
    "skin": ("skin",),
    "nose": ("nose",),
    "eyes, brows, glasses": ("eye_g", "l_eye", "r_eye", "l_brow", "r_brow"),
    "mouth, lips": ("mouth", "u_lip", "l_lip"),
    "hair": ("hair",),
    "hat": ("hat",),
    "ears, neck, cloth": ("l_ear", "r_ear", "ear_r", "neck_l", "neck", "cloth"),
}
TIMESTEPS = (50, 150, 300, 500, 700, 900)


def best_weight(first: np.ndarray, second: np.ndarray) -> float:
    """argmin_w of sum |w * first + (1 - w) * second|^2 over the given errors (float64 sums)."""
    diff = (first - second).astype(np.float64)
    return float(-(second * diff).sum() / max((diff * diff).sum(), 1e-30))


CAPTION_REGIONS = ("caption shows", "elsewhere")


def region_ids(labels: np.ndarray, latent_size: int) -> np.ndarray:
    """[N, S, S] index into REGIONS of each latent pixel (the label at the centre of its patch)."""
    factor = labels.shape[1] // latent_size
    centres = labels[:, factor // 2 :: factor, factor // 2 :: factor]
    ids = np.full(centres.shape, -1, np.int32)
    for i, classes in enumerate(REGIONS.values()):
        ids[np.isin(centres, [CLASS_NAMES.index(c) for c in classes])] = i
    return ids


def caption_region_ids(examples: list[dict], latent_size: int) -> np.ndarray:
    """[N, S, S] index into CAPTION_REGIONS: 0 where over a quarter of the latent pixel's patch changes
    when the face is re-rendered with no beard at the youngest age."""
    shown = np.stack(
        [np.any(e["image"] != make_example(e["seed"], beard=0, age=0)["image"], axis=-1) for e in examples]
    )
    factor = shown.shape[1] // latent_size
    patches = shown.reshape(len(examples), latent_size, factor, latent_size, factor).mean(axis=(2, 4))
    return np.where(patches > 0.25, 0, 1).astype(np.int32)


def measure(system, examples: list[dict], timesteps=TIMESTEPS, *, batch: int = 64, seed: int = 0) -> dict:
    """Held-out eps MSE per t of each expert, equal weights, the learned maps and the fits, and the fitted
    and learned weight on the first modality per region of each partition (face parts, caption area)."""
    cfg = system.cfg
    names = tuple(cfg.modalities)
    if len(names) != 2 or set(names) != {"text", "mask"}:
        raise ValueError(f"the diagnostic compares a text and a mask expert; this system has {list(names)}")
    images = J.from_uint8(np.stack([e["image"] for e in examples]))
    conditions = {
        "text": cond.encode_captions([e["caption"] for e in examples], cfg.modalities["text"].encoder).ids,
        "mask": cond.encode_masks([e["labels"] for e in examples], cfg.modalities["mask"].encoder),
    }
    partitions = {
        "face part": (tuple(REGIONS), region_ids(np.stack([e["labels"] for e in examples]), cfg.latent_size)),
        "caption area": (CAPTION_REGIONS, caption_region_ids(examples, cfg.latent_size)),
    }
    fit = np.arange(len(examples)) < len(examples) // 2
    schedule = make_schedule(cfg.schedule)
    graphdef, state = nnx.split(system)

    @jax.jit
    def errors(state, images, conditions, t, key):
        s = nnx.merge(graphdef, state)
        posterior_key, noise_key = jax.random.split(key)
        shape = (images.shape[0],) + latent_shape(cfg)
        z0 = s.autoencoder.encode_latent(images, normal(posterior_key, shape))
        noise = normal(noise_key, shape)
        t = jnp.full((shape[0],), t)
        p = predict(s, q_sample(schedule, z0, t, noise), t, encode_conditions(s, {n: conditions[n] for n in names}))
        return p.expert_eps - noise, p.eps - noise, p.weights[0, ..., 0]

    rows = []
    for t in timesteps:
        parts = [
            errors(
                state,
                images[i : i + batch],
                {n: jnp.asarray(c[i : i + batch]) for n, c in conditions.items()},
                t,
                jax.random.fold_in(jax.random.key(seed), i * STREAMS_PER_BATCH + t),
            )
            for i in range(0, len(examples), batch)
        ]
        first, second = np.concatenate([np.asarray(p[0]) for p in parts], axis=1)  # [M, N, ...]: examples second
        learned, learned_weight = (np.concatenate([np.asarray(p[k]) for p in parts]) for k in (1, 2))
        constant_w = best_weight(first[fit], second[fit])
        constant = constant_w * first + (1 - constant_w) * second
        mse = lambda e: float(np.mean(e[~fit] ** 2))  # noqa: E731 - scored on the held-out half only
        row = {
            "t": int(t),
            "mse": {
                names[0]: mse(first),
                names[1]: mse(second),
                "equal weights": mse(0.5 * (first + second)),
                "learned maps": mse(learned),
                "best constant": mse(constant),
            },
            "constant_weight": constant_w,
            "learned_weight_mean": float(learned_weight.mean()),
            "learned_weight_spatial_std": float(learned_weight.std(axis=(1, 2)).mean()),
            "region_weights": {},
        }
        for partition, (regions, ids) in partitions.items():
            by_region, weights = constant.copy(), {}
            for i, region in enumerate(regions):
                inside, fit_inside = ids == i, (ids == i) & fit[:, None, None]
                if not fit_inside.any() or not (inside & ~fit[:, None, None]).any():
                    continue  # a region absent from either half has nothing to fit or score
                w = best_weight(first[fit_inside], second[fit_inside])
                by_region[inside] = w * first[inside] + (1 - w) * second[inside]
                weights[region] = {
                    "fitted": w,
                    "learned": float(learned_weight[inside].mean()),
                    "pixels": int(inside.sum()),
                }
            row["mse"][f"best per {partition}"] = mse(by_region)
            row["region_weights"][partition] = weights
        rows.append(row)
    return {"first_modality": names[0], "rows": rows}


def tables(result: dict) -> str:
    """Markdown: the held-out losses per t, then the fitted and learned weight on the first modality per region
    of each partition."""
    rows, first = result["rows"], result["first_modality"]
    methods = list(rows[0]["mse"])
    lines = [
        "| t | " + " | ".join(methods) + f" | best constant weight on {first} | learned maps: mean, spatial std |",
        "|---" * (len(methods) + 3) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['t']} | "
            + " | ".join(f"{r['mse'][m]:.5f}" for m in methods)
            + f" | {r['constant_weight']:.2f} | {r['learned_weight_mean']:.2f}, "
            f"{r['learned_weight_spatial_std']:.3f} |"
        )
    for partition, regions in (("face part", tuple(REGIONS)), ("caption area", CAPTION_REGIONS)):
        lines += [
            "",
            f"Weight on {first} per {partition}, fitted / learned:",
            "",
            "| t | " + " | ".join(regions) + " |",
            "|---" * (len(regions) + 1) + "|",
        ]
        for r in rows:
            fitted = r["region_weights"][partition]
            cells = [
                f"{w['fitted']:.2f} / {w['learned']:.2f}" if (w := fitted.get(region)) else "-" for region in regions
            ]
            lines.append(f"| {r['t']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="collaborative system (default: the demo)")
    p.add_argument("--count", type=int, default=128, help="held-out examples, half to fit and half to score")
    p.add_argument("--timesteps", default=",".join(map(str, TIMESTEPS)), help="comma-separated t")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for weighting.md and weighting.json")
    args = p.parse_args(argv)
    if not 4 <= args.count <= TEST_SIZE:
        p.error(f"--count must be in 4..{TEST_SIZE} (the held-out split, two halves)")
    try:
        timesteps = [int(t) for t in args.timesteps.split(",")]
    except ValueError:
        p.error(f"--timesteps must be comma-separated integers, got {args.timesteps!r}")
    try:
        system = load_system(args.checkpoint)
        if not all(0 <= t < system.cfg.schedule.timesteps for t in timesteps):
            raise ValueError(f"--timesteps must lie in 0..{system.cfg.schedule.timesteps - 1}, got {timesteps}")
        result = measure(system, held_out_examples(args.count), timesteps, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = tables(result)
    print(text)
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, content in (("weighting.md", text + "\n"), ("weighting.json", json.dumps(result, indent=1))):
            tmp = out / (name + ".tmp")
            tmp.write_text(content)
            tmp.replace(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

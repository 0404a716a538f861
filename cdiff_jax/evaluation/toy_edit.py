"""Does editing move a toy face toward its targets while the rest stays? Judged on the demo models.

Held-out face i is edited toward face i + count: its caption (beard, age), its label map
(layout), or both (collaborative editing). For every alpha of the sweep the judges report

* attribute accuracy against the target caption and against the source's attributes,
* mask accuracy (parser pixel accuracy) against the target and against the source label map,

so a working edit shows the target columns rising with alpha while, for a caption-only edit, the
source mask accuracy stays (the layout is kept).

    python -m cdiff_jax.evaluation.toy_edit --count 4 --out outputs/toy_edit
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
from PIL import Image

from cdiff_jax import viz
from cdiff_jax.data.masks import save_label_png
from cdiff_jax.editing.imagic import ImagicSettings
from cdiff_jax.editing.run import DEMO_CHECKPOINT, EditRequest, SweepRequest, edit
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation.miniature import DEMO_JUDGES, held_out_examples

KINDS = {"text": ("text",), "mask": ("mask",), "both": ("mask", "text")}


def judge(judges, images: np.ndarray, source: dict, target: dict) -> dict:
    """Scores of uint8 images [K, H, W, 3] (one per alpha) against the source and the target face."""
    x = J.from_uint8(images)
    parsed = np.asarray(J.parse(judges, x))
    beard, age = (np.asarray(a) for a in J.attribute_predictions(judges, x))

    def attributes(face):
        return ((beard == face["attributes"]["beard"]).astype(float) + (age == face["attributes"]["age"])) / 2

    return {"mask_to_target": np.mean(parsed == target["labels"], axis=(1, 2)),
            "mask_to_source": np.mean(parsed == source["labels"], axis=(1, 2)),
            "attributes_to_target": attributes(target), "attributes_to_source": attributes(source)}


def run(count: int, out: pathlib.Path, alphas: tuple[float, ...], settings: ImagicSettings, steps: int,
        checkpoint=DEMO_CHECKPOINT, kinds=tuple(KINDS)) -> dict:
    """Mean scores per kind of edit and alpha, over `count` source faces."""
    faces = held_out_examples(2 * count)
    judges = J.load_judges(DEMO_JUDGES)
    scores = {kind: [] for kind in kinds}
    for i in range(count):
        source, target = faces[i], faces[i + count]
        inputs = out / "inputs" / f"{i:03d}"
        viz.save_png(inputs / "image.png", source["image"])
        save_label_png(inputs / "target_mask.png", target["labels"])
        given = {"text": target["caption"], "mask": str(inputs / "target_mask.png")}
        for kind in kinds:
            names = KINDS[kind]
            request = EditRequest(str(checkpoint), str(inputs / "image.png"), {n: given[n] for n in names}, seed=i,
                                  imagic=settings)
            sweep = edit(request, SweepRequest({n: alphas for n in names}, steps=steps), out / kind / f"{i:03d}")
            images = np.stack([np.asarray(Image.open(sweep / f"alpha{k:02d}_sample0.png")) for k in range(len(alphas))])
            scores[kind].append(judge(judges, images, source, target))
    return {kind: {field: np.mean([s[field] for s in rows], axis=0).round(3).tolist() for field in rows[0]}
            for kind, rows in scores.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=4, help="source faces")
    p.add_argument("--alphas", default="0,0.5,1,1.5,2")
    p.add_argument("--embedding-iterations", type=int, default=500)
    p.add_argument("--finetune-iterations", type=int, default=1000)
    p.add_argument("--finetune-lr", type=float, default=1e-6)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--kinds", default="text,mask,both")
    p.add_argument("--out", default="outputs/toy_edit")
    args = p.parse_args(argv)
    alphas = tuple(float(a) for a in args.alphas.split(","))
    settings = ImagicSettings(embedding_iterations=args.embedding_iterations,
                              finetune_iterations=args.finetune_iterations, finetune_lr=args.finetune_lr)
    out = pathlib.Path(args.out)
    results = run(args.count, out, alphas, settings, args.steps, kinds=tuple(args.kinds.split(",")))
    (out / "results.json").write_text(json.dumps({"alphas": alphas, "settings": vars(args), "results": results},
                                                 indent=1))
    for kind, fields in results.items():
        print(f"\n{kind} edit, alphas {alphas}")
        for field, values in fields.items():
            print(f"  {field:22s} " + "  ".join(f"{v:.3f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())

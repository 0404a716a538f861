"""Does editing move a toy face toward its targets while the rest stays? Judged on the demo models.

Held-out face i is edited by controlled targets the toy world can state exactly:

* caption: the same caption with a far beard length (none <-> long, short <-> medium are too alike to
  judge: a beard becomes none, none becomes long) and an age three decades away;
* label map: the layout of held-out face i + count;
* both, for collaborative editing.

For every alpha of the sweep the judges report (means over the faces):

* `beard_to_target`, `age_to_target` and `beard_to_source`, `age_to_source`: classifier accuracy;
* `beard_target_probability`, `age_target_probability`: the classifier's probability of the target class,
  graded where an accuracy on a few faces is all or nothing;
* `moved_pixels_as_target` / `moved_pixels_as_source`: over the pixels whose class differs between the
  source and target label maps, the share the parser labels as the target's class / the source's;
* `kept_pixels`: parser accuracy where the two maps agree (the whole map for caption edits).

Whole-map accuracy hides a layout edit: two toy faces already agree on about 80% of their pixels. A
working caption edit raises the target attribute columns with alpha and keeps `kept_pixels`; a working
mask edit raises `moved_pixels_as_target` and keeps the source attributes.

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
from cdiff_jax.data.toy_faces import AGE_DECADES, make_example
from cdiff_jax.editing.imagic import ImagicSettings
from cdiff_jax.editing.run import EditRequest, SweepRequest, edit
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation.miniature import DEMO_JUDGES, held_out_examples
from cdiff_jax.requests import DEMO_CHECKPOINT

KINDS = {"text": ("text",), "mask": ("mask",), "both": ("mask", "text")}
# Stage B for the demo experts: the reference's lr 1e-6 barely moves an expert this small, and much more
# overfits (docs/research_log.md, "Measurement history moved from the code").
DEMO_IMAGIC = ImagicSettings(finetune_lr=1e-5, finetune_iterations=100)


def edited_attributes(beard: int, age: int) -> tuple[int, int]:
    """The caption edit's target: no beard becomes long, any beard none; the age moves three decades."""
    return (3 if beard == 0 else 0), (age + 3 if age + 3 < len(AGE_DECADES) else age - 3)


def targets(source: dict, layout_donor: dict, kind: str) -> dict:
    """The target of an edit of `kind`: caption and attributes (edited for text), label map (the donor's for mask)."""
    names, face = KINDS[kind], source
    if "text" in names:
        beard, age = edited_attributes(source["attributes"]["beard"], source["attributes"]["age"])
        face = make_example(source["seed"], beard=beard, age=age)
    labels = layout_donor["labels"] if "mask" in names else source["labels"]
    return {"caption": face["caption"], "attributes": face["attributes"], "labels": labels}


def judge(judges, images: np.ndarray, source: dict, target: dict) -> dict:
    """Scores of uint8 images [K, H, W, 3] (one per alpha) against the source and the target face."""
    x = J.from_uint8(images)
    parsed = np.asarray(J.parse(judges, x))
    probabilities = dict(zip(("beard", "age"), (np.asarray(p) for p in J.attribute_probabilities(judges, x))))
    moved = source["labels"] != target["labels"]
    scores = {
        f"{name}_to_{who}": (p.argmax(axis=-1) == face["attributes"][name]).astype(float)
        for who, face in (("target", target), ("source", source))
        for name, p in probabilities.items()
    }
    scores.update({f"{name}_target_probability": p[:, target["attributes"][name]] for name, p in probabilities.items()})
    scores["kept_pixels"] = np.mean(parsed[:, ~moved] == source["labels"][~moved], axis=1)
    if moved.any():
        scores["moved_pixels_as_target"] = np.mean(parsed[:, moved] == target["labels"][moved], axis=1)
        scores["moved_pixels_as_source"] = np.mean(parsed[:, moved] == source["labels"][moved], axis=1)
    return scores


def run(
    count: int,
    out: pathlib.Path,
    alphas: tuple[float, ...],
    settings: ImagicSettings,
    steps: int,
    checkpoint=DEMO_CHECKPOINT,
    kinds=tuple(KINDS),
) -> dict:
    """Scores per kind of edit: {"mean": {field: per alpha}, "per_face": [{field: per alpha}, ...]}, over
    `count` source faces (the spread across faces is what a margin on these numbers must allow for).
    Writes `grid.png`: one row per face, its source image, then each kind's sweep."""
    faces = held_out_examples(2 * count)
    judges = J.load_judges(DEMO_JUDGES)
    scores = {kind: [] for kind in kinds}
    grid_rows = []
    for i in range(count):
        source = faces[i]
        inputs = out / "inputs" / f"{i:03d}"
        viz.save_png(inputs / "image.png", source["image"])
        grid_rows.append([source["image"]])
        for kind in kinds:
            target = targets(source, faces[i + count], kind)
            save_label_png(inputs / f"{kind}_target_mask.png", target["labels"])
            given = {"text": target["caption"], "mask": str(inputs / f"{kind}_target_mask.png")}
            request = EditRequest(
                str(checkpoint), str(inputs / "image.png"), {n: given[n] for n in KINDS[kind]}, seed=i, imagic=settings
            )
            sweep = edit(request, SweepRequest({n: alphas for n in KINDS[kind]}, steps=steps), out / kind / f"{i:03d}")
            images = np.stack([np.asarray(Image.open(sweep / f"alpha{k:02d}_sample0.png")) for k in range(len(alphas))])
            scores[kind].append(judge(judges, images, source, target))
            grid_rows[-1].extend(images)
    labels = ["source"] + [f"{kind} {alpha:g}" for kind in kinds for alpha in alphas]
    viz.save_png(out / "grid.png", viz.grid(np.stack(grid_rows), col_labels=labels))
    return {
        kind: {
            "mean": {field: np.mean([r[field] for r in rows], axis=0).round(3).tolist() for field in rows[0]},
            "per_face": [{field: np.round(v, 3).tolist() for field, v in r.items()} for r in rows],
        }
        for kind, rows in scores.items()
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=4, help="source faces")
    p.add_argument("--alphas", default="0,0.5,1,1.5,2")
    p.add_argument("--embedding-iterations", type=int, default=DEMO_IMAGIC.embedding_iterations)
    p.add_argument("--finetune-iterations", type=int, default=DEMO_IMAGIC.finetune_iterations)
    p.add_argument("--finetune-lr", type=float, default=DEMO_IMAGIC.finetune_lr)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--chunk", type=int, default=DEMO_IMAGIC.chunk, help="Imagic iterations per compiled call")
    p.add_argument("--kinds", default="text,mask,both")
    p.add_argument("--out", default="outputs/toy_edit")
    args = p.parse_args(argv)
    alphas = tuple(float(a) for a in args.alphas.split(","))
    settings = ImagicSettings(
        embedding_iterations=args.embedding_iterations,
        finetune_iterations=args.finetune_iterations,
        finetune_lr=args.finetune_lr,
        chunk=args.chunk,
    )
    out = pathlib.Path(args.out)
    results = run(args.count, out, alphas, settings, args.steps, kinds=tuple(args.kinds.split(",")))
    (out / "results.json").write_text(
        json.dumps({"alphas": alphas, "settings": vars(args), "results": results}, indent=1)
    )
    for kind, result in results.items():
        print(f"\n{kind} edit, alphas {alphas}, means over {args.count} faces")
        for field, values in result["mean"].items():
            print(f"  {field:22s} " + "  ".join(f"{v:.3f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())

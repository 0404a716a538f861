"""CelebAMask-HQ's per-part annotations -> the 19-class label maps the dataset builder reads.

CelebAMask-HQ ships each face's mask as up to 18 binary part images, `CelebAMask-HQ-mask-anno/<k // 2000>/
<k:05d>_<part>.png` (512x512); its `g_mask.py` paints them, in the order of our `CLASS_NAMES` (class i + 1
for part i, a later part over an earlier one), into one map per face, which is what Collaborative
Diffusion trains on. Nothing here reads or runs that script: the same rule, written out, with PIL.

    python -m cdiff_jax.data.celebamask_parts CelebAMask-HQ/CelebAMask-HQ-mask-anno MANUAL_DIR/mask

writes `<k>.png` palette label maps (the names of the images, `<k>.jpg`), skipping maps already written,
so an interrupted run continues. A face without any part file is reported, never written as all background.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from cdiff_jax.data.images import open_image
from cdiff_jax.data.masks import CLASS_NAMES, save_label_png
from cdiff_jax.progress import bar

FACES = 30_000
FACES_PER_FOLDER = 2_000
PART_SIZE = 512
PARTS = CLASS_NAMES[1:]  # g_mask.py's label_list: part i is class i + 1


def part_path(anno_dir: pathlib.Path, face: int, part: str) -> pathlib.Path:
    return anno_dir / str(face // FACES_PER_FOLDER) / f"{face:05d}_{part}.png"


def merge_parts(anno_dir: pathlib.Path, face: int) -> np.ndarray | None:
    """The face's uint8 [512, 512] label map, or None if it has no part file. A pixel belongs to a part
    where the part image's first channel as OpenCV reads it (blue) is nonzero."""
    labels, found = np.zeros((PART_SIZE, PART_SIZE), np.uint8), False
    for class_id, part in enumerate(PARTS, start=1):
        path = part_path(anno_dir, face, part)
        if not path.is_file():
            continue
        blue = np.asarray(open_image(path, f"part image {path}", "RGB"))[..., 2]
        if blue.shape != labels.shape:
            raise ValueError(
                f"part image {path} is {blue.shape[1]}x{blue.shape[0]}, not {PART_SIZE}x{PART_SIZE}; "
                "is this CelebAMask-HQ-mask-anno?"
            )
        labels[blue != 0] = class_id
        found = True
    return labels if found else None


def merge_all(anno_dir: pathlib.Path, out_dir: pathlib.Path, faces=range(FACES)) -> list[int]:
    """Write `<k>.png` for every face of `faces` not written yet; returns the faces without any part file."""
    missing = []
    for face in bar(faces, "merging CelebAMask-HQ parts", unit="face"):
        target = out_dir / f"{face}.png"
        if target.is_file():
            continue
        labels = merge_parts(anno_dir, face)
        if labels is None:
            missing.append(face)
        else:
            save_label_png(target, labels)
    return missing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("anno_dir", type=pathlib.Path, help="CelebAMask-HQ-mask-anno (the folders 0 .. 14)")
    p.add_argument("out_dir", type=pathlib.Path, help="where the label maps go (the dataset's manual mask/ folder)")
    p.add_argument("--faces", type=int, default=FACES, help=f"merge faces 0 .. N-1 (default all {FACES})")
    args = p.parse_args(argv)
    if not (args.anno_dir / "0").is_dir():
        print(
            f"error: {args.anno_dir} has no folder 0; pass CelebAMask-HQ's CelebAMask-HQ-mask-anno folder",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.faces <= FACES:
        p.error(f"--faces must be in 1..{FACES}")
    try:
        missing = merge_all(args.anno_dir, args.out_dir, range(args.faces))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote label maps to {args.out_dir}; {len(missing)} face(s) had no part file"
        + (f" (first: {missing[:5]})" if missing else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

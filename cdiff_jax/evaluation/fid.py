"""FID between two image folders (or saved statistics), as pytorch-fid computes it.

    python -m cdiff_jax.evaluation.fid DIR_A DIR_B --weights pt_inception-2015-12-05-6726825d.pth
    python -m cdiff_jax.evaluation.fid DIR stats.npz --save-stats --weights ...

Each argument is a folder of images (the files directly in it with pytorch-fid's extensions, sorted)
or an `.npz` holding `mu` and `sigma` (pytorch-fid's statistics files read and write here unchanged).
Images are read as pytorch-fid reads them (RGB, uint8 / 255) and featurised in fixed-size batches
split over every device; nothing is downloaded: the Inception weights are the file pytorch-fid uses.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np
from flax import nnx

from cdiff_jax.data.images import open_image
from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics
from cdiff_jax.nn.inception import InceptionV3, pool3_features
from cdiff_jax.parallel import data_mesh, replicate, shard_batch
from cdiff_jax.paths import creatable_parent
from cdiff_jax.progress import bar
from cdiff_jax.weights.state_dict_io import CheckpointReadError

IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The images directly in `folder`, sorted by name; at least two (a covariance needs them)."""
    files = sorted(p for ext in IMAGE_EXTENSIONS for p in folder.glob(f"*.{ext}"))
    if len(files) < 2:
        raise ValueError(
            f"{folder} holds {len(files)} image(s) ({', '.join(IMAGE_EXTENSIONS)}); FID needs at "
            "least 2 (the papers use 50 to 50000)"
        )
    return files


def read_images(files: list[pathlib.Path]) -> np.ndarray:
    """[N, H, W, 3] float32 in [0, 1]; every image must have the first one's size, as in pytorch-fid's batches."""
    images = []
    for path in files:
        image = np.asarray(open_image(path, f"image {path}", "RGB"), np.float32) / 255
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"{path} is {image.shape[1]}x{image.shape[0]} but {files[0]} is "
                f"{images[0].shape[1]}x{images[0].shape[0]}; resize the folder's images to one size"
            )
        images.append(image)
    return np.stack(images)


def features(model: InceptionV3, images: np.ndarray, batch: int = 50, desc: str = "FID features") -> np.ndarray:
    """[N, 2048] pool3 features, `batch` images per call split over all devices (the last batch padded)."""
    mesh = data_mesh()
    batch = -(-min(batch, len(images)) // mesh.size) * mesh.size
    graphdef, state = nnx.split(model)
    state = replicate(state, mesh)
    out = []
    for start in bar(range(0, len(images), batch), desc, unit="batch"):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(pool3_features(graphdef, state, shard_batch(padded, mesh)))[: len(chunk)])
    return np.concatenate(out)


def load_statistics(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as stats:
        if "mu" not in stats or "sigma" not in stats:
            raise ValueError(
                f"{path} holds {sorted(stats.files)}, not FID statistics; expected arrays mu and sigma "
                "(as --save-stats or pytorch-fid writes them)"
            )
        return stats["mu"], stats["sigma"]


def save_statistics(path: pathlib.Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """pytorch-fid's format (`np.savez_compressed` of mu and sigma), written to a temporary file and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, mu=mu, sigma=sigma)
    os.replace(tmp, path)


def statistics(source: pathlib.Path, model: InceptionV3, batch: int) -> tuple[np.ndarray, np.ndarray]:
    if source.suffix == ".npz":
        return load_statistics(source)
    return gaussian_statistics(features(model, read_images(image_files(source)), batch, desc=source.name))


def _check_source(path: pathlib.Path) -> None:
    if path.suffix == ".npz" and not path.is_file():
        raise FileNotFoundError(f"{path}: no such statistics file; pass an .npz of mu and sigma or an image folder")
    if path.suffix != ".npz" and not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; pass a folder of images or an .npz of statistics")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs=2, type=pathlib.Path, help="two image folders or .npz statistics files")
    p.add_argument(
        "--weights",
        required=True,
        type=pathlib.Path,
        help="pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth)",
    )
    p.add_argument("--batch-size", type=int, default=50, help="images per forward pass (over all devices)")
    p.add_argument(
        "--save-stats",
        action="store_true",
        help="write the statistics of the first path (a folder) to the second (.npz) instead",
    )
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    first, second = args.paths
    try:
        if args.save_stats:
            if second.suffix != ".npz" or first.suffix == ".npz":
                p.error("--save-stats takes an image folder and the .npz file to write, in that order")
            if second.exists():
                p.error(f"{second} exists; pass a new path (statistics files are never overwritten)")
            creatable_parent(second)
        for path in args.paths[:1] if args.save_stats else args.paths:
            _check_source(path)
        model = InceptionV3.from_checkpoint(args.weights)
        first_stats = statistics(first, model, args.batch_size)
        if args.save_stats:
            save_statistics(second, *first_stats)
            print(f"saved FID statistics of {first} to {second}")
            return 0
        print(f"FID:  {frechet_distance(*first_stats, *statistics(second, model, args.batch_size))}")
    except (OSError, ValueError, CheckpointReadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

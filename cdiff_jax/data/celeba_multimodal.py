"""CelebA-HQ multi-modal training data (face image, parsing mask, caption, scribble) as a TFDS dataset.

The builder reads the authors' release layout from the manual dir::

    image/<name>.jpg|.png                          square face images, any size
    text/captions_hq_beard_and_age_2022-08-19.json {"<name>.jpg": {"Beard_and_Age": "..."}, ...}
    mask/<name>.pt | mask/<name>.png               one-hot LongTensor [19, 1024] or a label PNG
    scribble/<name>.png                            optional: line drawings, white lines on black

and writes array_record files, which grain reads by index. Everything here works without TensorFlow:
images are handed to ``tfds.features.Image`` as PIL images (TFDS then encodes them with PIL, while
numpy arrays would need ``tf.image``), and reading back goes through ``as_data_source`` (numpy decoding,
which returns the ``caption`` and ``name`` text features as UTF-8 bytes).
The split is the reference's: the last ``test_size`` keys of the caption JSON are the test split.
Without a ``scribble/`` folder each scribble is the line drawing of the 32x32 mask's class boundaries,
a stand-in until real edge maps are put there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from cdiff_jax.data.images import open_image
from cdiff_jax.data.masks import MASK_SIZE, NUM_CLASSES, load_label_map, resize_label_map
from cdiff_jax.data.scribbles import SCRIBBLE_SIZE, load_strokes, resize_strokes, scribble_from_labels
from cdiff_jax.progress import bar, configure_logging
from cdiff_jax.weights.state_dict_io import read_tensor

log = logging.getLogger(__name__)

CAPTIONS_JSON = "captions_hq_beard_and_age_2022-08-19.json"
CAPTION_KEY = "Beard_and_Age"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".pt", ".png")  # the official one-hot tensors first
DEFAULT_RESOLUTION = 256
DEFAULT_TEST_SIZE = 3000


class BadExampleError(ValueError):
    """One example of the manual dir is unusable; the message names it and says what is wrong."""


@dataclasses.dataclass(eq=False)
class CelebAMultiModalConfig(tfds.core.BuilderConfig):
    """Image side length and test-split size; both change the stored data, so each pair is its own config."""

    resolution: int = DEFAULT_RESOLUTION
    test_size: int = DEFAULT_TEST_SIZE


def _make_config(resolution: int, test_size: int) -> CelebAMultiModalConfig:
    for what, value in (("resolution", resolution), ("test_size", test_size)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return CelebAMultiModalConfig(
        name=f"res{resolution}_test{test_size}",
        resolution=resolution,
        test_size=test_size,
        description=f"{resolution}x{resolution} images; the last {test_size} caption keys are the test split",
    )


def _read_captions(text_dir: pathlib.Path) -> dict:
    """The caption JSON (the official name, else the only ``.json`` in ``text/``), keys in file order."""
    path = text_dir / CAPTIONS_JSON
    if not path.is_file():
        found = sorted(text_dir.glob("*.json"))
        if len(found) != 1:
            raise ValueError(
                f"{text_dir}: expected {CAPTIONS_JSON} or exactly one .json caption file, "
                f"found {[p.name for p in found]}"
            )
        path = found[0]
    captions = json.loads(path.read_text())
    if not isinstance(captions, dict) or not captions:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping image file names to captions")
    return captions


def _caption_text(value) -> str:
    """The official entries are ``{"Beard_and_Age": text}``; a plain string or one-entry dict is also fine."""
    if isinstance(value, dict):
        value = value.get(CAPTION_KEY, next(iter(value.values())) if len(value) == 1 else None)
    if not isinstance(value, str):
        raise ValueError(f"caption must be a string or {{{CAPTION_KEY!r}: string}}, got {value!r}")
    if not value.strip():
        raise ValueError("empty caption")
    return value


def _find_file(folder: pathlib.Path, stem: str, suffixes: tuple[str, ...], what: str) -> pathlib.Path:
    for suffix in suffixes:
        if (path := folder / (stem + suffix)).is_file():
            return path
    raise ValueError(f"missing {what}: none of {folder}/{stem}{{{','.join(suffixes)}}} exists")


def _load_image(path: pathlib.Path, resolution: int) -> Image.Image:
    """RGB PIL image at ``resolution``; resized (bicubic) only when the stored size differs."""
    img = open_image(path, f"image {path}", "RGB")
    if img.width != img.height:
        raise ValueError(f"image {path} is {img.width}x{img.height}, expected a square image")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC)
    return img


def _load_mask(path: pathlib.Path) -> np.ndarray:
    """uint8 [32, 32] class ids from an official one-hot ``.pt`` or a label PNG (resized like the reference)."""
    if path.suffix != ".pt":
        return resize_label_map(load_label_map(path), MASK_SIZE)
    onehot = read_tensor(path)
    if onehot.shape != (NUM_CLASSES, MASK_SIZE * MASK_SIZE):
        raise ValueError(
            f"mask {path} has shape {list(onehot.shape)}, expected [{NUM_CLASSES}, {MASK_SIZE * MASK_SIZE}] "
            f"(one row per class over the {MASK_SIZE}x{MASK_SIZE} pixels)"
        )
    if not (np.isin(onehot, (0, 1)).all() and (onehot.sum(axis=0) == 1).all()):
        raise ValueError(f"mask {path} is not one-hot: every pixel needs exactly one class set to 1, the rest 0")
    return onehot.argmax(axis=0).reshape(MASK_SIZE, MASK_SIZE).astype(np.uint8)


def _load_scribble(path: pathlib.Path) -> np.ndarray:
    """uint8 [SCRIBBLE_SIZE, SCRIBBLE_SIZE], 255 on strokes, from a line-drawing PNG of any size."""
    return np.where(resize_strokes(load_strokes(path), SCRIBBLE_SIZE), np.uint8(255), np.uint8(0))


def _scribble_of_mask(labels: np.ndarray) -> np.ndarray:
    """The line drawing of a label map's class boundaries at SCRIBBLE_SIZE (the stand-in scribble)."""
    return scribble_from_labels(resize_label_map(labels, SCRIBBLE_SIZE))


class CelebAMultiModal(tfds.core.GeneratorBasedBuilder):
    """CelebA-HQ images with face-parsing masks and captions, as used to train Collaborative Diffusion.

    ``resolution`` / ``test_size`` pick the config (``res{R}_test{N}``). With ``skip_bad_examples`` an
    unusable example is logged and left out instead of stopping the build; the ``"name: problem"``
    list is kept in ``info.metadata["bad_examples"]`` so it survives with the prepared data.
    """

    name = "celeba_multimodal"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "a scribble (line drawing) per example", "1.0.0": "image, mask and caption"}
    BUILDER_CONFIGS = [_make_config(256, DEFAULT_TEST_SIZE), _make_config(512, DEFAULT_TEST_SIZE)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the CelebA-HQ multi-modal data of Collaborative Diffusion and place image/, text/ "
        "(the caption JSON) and mask/ (<id>.pt one-hot tensors or <id>.png label maps) in the manual dir, "
        "and optionally scribble/ (<id>.png line drawings, white lines on black)."
    )

    def __init__(
        self, *, resolution: int | None = None, test_size: int | None = None, skip_bad_examples: bool = False, **kwargs
    ):
        if resolution is not None or test_size is not None:
            config = _make_config(
                DEFAULT_RESOLUTION if resolution is None else resolution,
                DEFAULT_TEST_SIZE if test_size is None else test_size,
            )
            # TFDS refuses a custom config that shares the name of a predefined one.
            kwargs["config"] = self.builder_configs.get(config.name, config)
        kwargs.setdefault("file_format", "array_record")
        self.skip_bad_examples = skip_bad_examples
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS's own lookup needs ``importlib_resources`` (absent on Python >= 3.9) for datasets
        defined inside an installed package, and uses the path only to look for a checksums file."""
        return epath.Path(__file__)

    @property
    def bad_examples(self) -> list[str]:
        """``"name: problem"`` for each example skipped by the build (also after reloading the dataset)."""
        return list(self.info.metadata.get("bad_examples", []))

    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared" around a
    # build; nothing is downloaded here (the files come from manual_dir), so say what does happen.
    def _log_download_bytes(self) -> None:
        log.info("preparing %s from the release files in the manual dir into %s ...", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(r, r, 3), encoding_format="png"),
                    "mask": tfds.features.Tensor(shape=(MASK_SIZE, MASK_SIZE), dtype=np.uint8),
                    "caption": tfds.features.Text(),
                    "scribble": tfds.features.Tensor(shape=(SCRIBBLE_SIZE, SCRIBBLE_SIZE), dtype=np.uint8),
                    "name": tfds.features.Text(),
                }
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # keep the caption-JSON order, like the reference's test split
            homepage="https://github.com/ziqihuangg/Collaborative-Diffusion",
        )

    def _split_generators(self, dl_manager):
        root = pathlib.Path(os.fspath(dl_manager.manual_dir))
        captions = _read_captions(root / "text")
        names = list(captions)
        test_size = self.builder_config.test_size
        if test_size >= len(names):
            raise ValueError(f"test_size={test_size} leaves no training examples: the captions list {len(names)}")
        # The split generators append to this list while TFDS consumes them; TFDS saves the metadata last.
        self.info.metadata["bad_examples"] = []
        cut = len(names) - test_size
        return {
            "train": self._generate_examples(root, captions, names[:cut], first_key=0),
            "test": self._generate_examples(root, captions, names[cut:], first_key=cut),
        }

    def _generate_examples(self, root: pathlib.Path, captions: dict, names: list[str], first_key: int):
        """Integer keys in JSON order: with ``disable_shuffling`` TFDS writes examples sorted by key."""
        skipped = 0
        for key, name in enumerate(names, start=first_key):
            try:
                yield key, self._load_example(root, name, captions[name])
            except ValueError as e:
                problem = f"{name}: {e}"
                if not self.skip_bad_examples:
                    raise BadExampleError(
                        f"bad example {problem}; fix or remove it, or build with skip_bad_examples=True"
                    ) from e
                log.warning("skipping bad example %s", problem)
                self.info.metadata["bad_examples"].append(problem)
                skipped += 1
        if skipped:
            log.warning("skipped %d of %d examples as bad", skipped, len(names))

    def _load_example(self, root: pathlib.Path, name: str, caption) -> dict:
        return load_example(root, name, caption, self.builder_config.resolution)


def load_example(root: pathlib.Path, name: str, caption, resolution: int) -> dict:
    """One example from the release files (ValueError naming what is wrong with it)."""
    stem = pathlib.PurePath(name).stem
    mask = _load_mask(_find_file(root / "mask", stem, MASK_SUFFIXES, "mask"))
    scribble_dir = root / "scribble"
    return {
        "image": _load_image(_find_file(root / "image", stem, IMAGE_SUFFIXES, "image"), resolution),
        "mask": mask,
        "caption": _caption_text(caption),
        "scribble": (
            _load_scribble(_find_file(scribble_dir, stem, (".png",), "scribble"))
            if scribble_dir.is_dir()
            else _scribble_of_mask(mask)
        ),
        "name": name,
    }


def check_release(manual_dir, resolution: int = DEFAULT_RESOLUTION) -> list[str]:
    """Everything a build would stop at, as "name: problem" lines, without writing anything: each captioned
    example read as the build reads it, and images that no caption names (a build leaves them out)."""
    root = pathlib.Path(manual_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"manual dir {root} not found; it must hold image/, text/ and mask/")
    captions = _read_captions(root / "text")
    problems = []
    for name in bar(list(captions), "checking examples", unit="example"):
        try:
            load_example(root, name, captions[name], resolution)
        except ValueError as err:
            problems.append(f"{name}: {err}")
    captioned = {pathlib.PurePath(name).stem for name in captions}
    images = (
        sorted(p for p in (root / "image").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if (root / "image").is_dir()
        else []
    )
    problems += [f"{p.name}: no caption names it (a build leaves it out)" for p in images if p.stem not in captioned]
    return problems


def build_dataset(
    manual_dir,
    data_dir,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    test_size: int = DEFAULT_TEST_SIZE,
    skip_bad_examples: bool = False,
) -> CelebAMultiModal:
    """Prepare the dataset in ``data_dir`` from the release files in ``manual_dir`` (a no-op if already built)."""
    if not pathlib.Path(manual_dir).is_dir():
        raise FileNotFoundError(f"manual dir {manual_dir} not found; it must hold image/, text/ and mask/")
    builder = CelebAMultiModal(
        data_dir=os.fspath(data_dir), resolution=resolution, test_size=test_size, skip_bad_examples=skip_bad_examples
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


def data_sources(data_dir, *, resolution: int = DEFAULT_RESOLUTION, test_size: int = DEFAULT_TEST_SIZE) -> dict:
    """``{"train": source, "test": source}``: random-access sources of example dicts for grain."""
    builder = CelebAMultiModal(data_dir=os.fspath(data_dir), resolution=resolution, test_size=test_size)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"no prepared {builder.name}/{builder.builder_config.name} under {data_dir}; build it with `python -m "
            f"cdiff_jax.data.celeba_multimodal MANUAL_DIR {data_dir} --resolution {resolution} --test-size "
            f"{test_size}` (or set data_dir to where it was built)"
        )
    return builder.as_data_source()


def main(argv=None) -> int:
    """``python -m cdiff_jax.data.celeba_multimodal MANUAL_DIR DATA_DIR``: prepare the dataset for train.py."""
    p = argparse.ArgumentParser(description="Prepare the CelebA-HQ multi-modal TFDS dataset from the release files.")
    p.add_argument("manual_dir", help="folder with image/, text/ (caption JSON), mask/ and optionally scribble/")
    p.add_argument("data_dir", nargs="?", help="TFDS data dir to write (the training config's data_dir)")
    p.add_argument(
        "--check",
        action="store_true",
        help="only list what is wrong with the manual dir's examples (writes nothing, no data_dir)",
    )
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    p.add_argument("--test-size", type=int, default=DEFAULT_TEST_SIZE, help="last N caption keys form the test split")
    p.add_argument("--skip-bad-examples", action="store_true", help="leave out unusable examples instead of failing")
    args = p.parse_args(argv)
    configure_logging()
    if args.check:
        try:
            problems = check_release(args.manual_dir, args.resolution)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("\n".join(problems + [f"{len(problems)} problem(s) in {args.manual_dir}"]))
        return 1 if problems else 0
    if args.data_dir is None:
        p.error("give the data_dir to write (or --check to only check the manual dir)")
    try:
        builder = build_dataset(
            args.manual_dir,
            args.data_dir,
            resolution=args.resolution,
            test_size=args.test_size,
            skip_bad_examples=args.skip_bad_examples,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items())
    print(f"prepared {builder.data_dir}: {splits} examples, {len(builder.bad_examples)} bad examples skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

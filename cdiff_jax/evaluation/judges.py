"""Judges for the miniature evaluation on toy faces: a face parser and an attribute classifier.

The paper scores generated faces with networks trained on real faces: a face-parsing network (mask
accuracy: the parse of a generated image against the label map it was conditioned on), attribute
predictors for the text condition, and FID on Inception features. For 64x64 toy faces two small CNNs
play these parts: `FaceParser` (per-pixel CelebAMask-HQ classes) and `AttributeClassifier` (beard
length and age decade, whose pooled penultimate features stand in for Inception's in the Frechet
distance). They are trained together on the toy-face training split and scored on the held-out split,
which is what the diffusion models never saw.

``python -m cdiff_jax.evaluation.judges DATA_DIR OUT_DIR [--steps N --batch B --test-size T --seed S]``
trains them on a dataset written by ``python -m cdiff_jax.data.toy_faces`` and writes OUT_DIR atomically:
``judges.json`` (configs, held-out metrics, settings) beside orbax ``parser/`` and ``classifier/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cdiff_jax import checkpoint
from cdiff_jax.data.celeba_multimodal import CAPTIONS_JSON
from cdiff_jax.data.images import open_image
from cdiff_jax.data.masks import CLASS_NAMES, NUM_CLASSES, load_label_map
from cdiff_jax.data.toy_faces import AGE_DECADES, ATTRIBUTES_JSON, BEARD_LENGTHS, IMAGE_SIZE
from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics
from cdiff_jax.nn.layers import fan_in_truncated_normal
from cdiff_jax.optimization import LoopPolicy, NonFiniteStep, adam, first_rejected, loop_policy, run_steps
from cdiff_jax.progress import bar, configure_logging, log

# Trained on the 10,000-face toy set (seed 0; the last 1000 held out), shipped as package data.
TOY_JUDGES_DIR = pathlib.Path(__file__).with_name("judges_toy")
JUDGES_JSON = "judges.json"
PARSER_DIR = "parser"
CLASSIFIER_DIR = "classifier"
EVAL_CHUNK = 250  # held-out images per compiled evaluation call
# The parser's loss weighs each class by frequency**-0.5 (in the training label maps): eyes, brows and lips
# cover under 1% of the pixels each, and unweighted they are learned last (measured at 800 steps without
# mirroring: held-out mean IoU 0.62 unweighted, 0.77 weighted; pixel accuracy 0.965 and 0.962).
CLASS_WEIGHT_POWER = 0.5
_TOY_FACES_HINT = "write one with `python -m cdiff_jax.data.toy_faces DIR --count N`"


# ----------------------------------------------------------------------------------------------
# Networks.


@dataclasses.dataclass(frozen=True)
class ParserConfig:
    """U-Net: `widths[i]` channels at 64 / 2**i pixels.

    Full resolution, where convolutions cost the most and the colours already say most of the class,
    gets one convolution on each side; the coarser levels get two and give the context that tells the
    left eye from the right. The class logits are read from the full-resolution channels, so those are
    not narrowed (with 8 of them the eyes, brows and lips were still unlearned after 600 steps).
    """

    widths: tuple[int, ...] = (16, 16, 32, 64)
    num_classes: int = NUM_CLASSES

    def __post_init__(self):
        if len(self.widths) < 2:
            raise ValueError(f"the parser needs at least two levels of widths, got {self.widths}")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """A stem at full resolution (wrinkles and hair strands are one pixel wide), then one level per
    width, each halving the resolution; the features are the last level averaged over space."""

    stem_width: int = 16
    widths: tuple[int, ...] = (16, 32, 64, 96)
    beard_classes: int = len(BEARD_LENGTHS)
    age_classes: int = len(AGE_DECADES)


@dataclasses.dataclass(frozen=True)
class JudgesConfig:
    parser: ParserConfig = ParserConfig()
    classifier: ClassifierConfig = ClassifierConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> JudgesConfig:
        def build(kind, fields: dict):
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

        return cls(parser=build(ParserConfig, d["parser"]), classifier=build(ClassifierConfig, d["classifier"]))


HE_NORMAL = fan_in_truncated_normal(2.0)  # nnx.initializers.he_normal(), drawn as XLA:CPU compiles it faster


def _conv(in_ch: int, out_ch: int, *, stride: int = 1, kernel: int = 3, rngs: nnx.Rngs) -> nnx.Conv:
    """He-initialised, as every convolution here feeds a ReLU (or the logits)."""
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding="SAME", kernel_init=HE_NORMAL, rngs=rngs)


class _DoubleConv(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, rngs: nnx.Rngs):
        self.first = _conv(in_ch, out_ch, stride=stride, rngs=rngs)
        self.second = _conv(out_ch, out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.second(nnx.relu(self.first(x))))


def _upsample(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class FaceParser(nnx.Module):
    """Image [B, 64, 64, 3] in [-1, 1] -> class logits [B, 64, 64, 19] (CelebAMask-HQ classes)."""

    def __init__(self, cfg: ParserConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w = cfg.widths
        self.stem = _conv(3, w[0], rngs=rngs)
        self.down = nnx.List([_DoubleConv(w[i - 1], w[i], stride=2, rngs=rngs) for i in range(1, len(w))])
        self.up = nnx.List([_DoubleConv(w[i + 1] + w[i], w[i], rngs=rngs) for i in range(1, len(w) - 1)])
        self.merge = _conv(w[1] + w[0], w[0], rngs=rngs)
        self.head = _conv(w[0], cfg.num_classes, kernel=1, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem(images))
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](jnp.concatenate([_upsample(x), skips[i + 1]], axis=-1))
        x = nnx.relu(self.merge(jnp.concatenate([_upsample(x), skips[0]], axis=-1)))
        return self.head(x)


class AttributeClassifier(nnx.Module):
    """Image [B, 64, 64, 3] in [-1, 1] -> (beard logits [B, 4], age logits [B, 6])."""

    def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.stem = _conv(3, cfg.stem_width, rngs=rngs)
        ins = (cfg.stem_width,) + cfg.widths[:-1]
        self.levels = nnx.List([_DoubleConv(i, o, stride=2, rngs=rngs) for i, o in zip(ins, cfg.widths)])
        self.beard = nnx.Linear(cfg.widths[-1], cfg.beard_classes, rngs=rngs)
        self.age = nnx.Linear(cfg.widths[-1], cfg.age_classes, rngs=rngs)

    def features(self, images: jax.Array) -> jax.Array:
        """[B, widths[-1]]: the penultimate activations averaged over space (the Frechet features)."""
        x = nnx.relu(self.stem(images))
        for level in self.levels:
            x = level(x)
        return x.mean(axis=(1, 2))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        f = self.features(images)
        return self.beard(f), self.age(f)


class Judges(nnx.Module):
    """Both judges in one tree, so they train in one compiled step and travel as one object."""

    def __init__(self, cfg: JudgesConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.parser = FaceParser(cfg.parser, rngs=rngs)
        self.classifier = AttributeClassifier(cfg.classifier, rngs=rngs)


# ----------------------------------------------------------------------------------------------
# Scoring images: pure jitted functions of (graphdef, state), with thin wrappers taking the judges.


def from_uint8(images) -> jax.Array:
    """uint8 RGB [..., 3] -> float32 in [-1, 1], the judges' input (the inverse of viz.to_uint8)."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def _check_images(images) -> jax.Array:
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images must be [B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got shape {shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floats in [-1, 1], got dtype {images.dtype}; convert uint8 with from_uint8")
    return jnp.asarray(images, jnp.float32)


@jax.jit(static_argnames=("graphdef",))
def _parse(graphdef, state, images):
    return jnp.argmax(nnx.merge(graphdef, state).parser(images), axis=-1)


@jax.jit(static_argnames=("graphdef",))
def _attribute_probabilities(graphdef, state, images):
    beard, age = nnx.merge(graphdef, state).classifier(images)
    return jax.nn.softmax(beard), jax.nn.softmax(age)


@jax.jit(static_argnames=("graphdef",))
def _features(graphdef, state, images):
    return nnx.merge(graphdef, state).classifier.features(images)


def parse(judges: Judges, images) -> jax.Array:
    """Label maps int32 [B, 64, 64] (class ids 0..18) of images [B, 64, 64, 3] in [-1, 1]."""
    return _parse(*nnx.split(judges), _check_images(images))


def attribute_probabilities(judges: Judges, images) -> tuple[jax.Array, jax.Array]:
    """(beard [B, 4], age [B, 6]) class probabilities: graded where a prediction is all or nothing."""
    return _attribute_probabilities(*nnx.split(judges), _check_images(images))


def attribute_predictions(judges: Judges, images) -> tuple[jax.Array, jax.Array]:
    """(beard, age) int32 [B] indices into toy_faces.BEARD_LENGTHS and AGE_DECADES."""
    return tuple(jnp.argmax(p, axis=-1) for p in attribute_probabilities(judges, images))


def features(judges: Judges, images) -> jax.Array:
    """float32 [B, D]: the classifier's pooled penultimate features, for the Frechet distance."""
    return _features(*nnx.split(judges), _check_images(images))


# ----------------------------------------------------------------------------------------------
# Data: the raw toy-face layout, read with numpy and PIL.


@dataclasses.dataclass(frozen=True)
class ToyFaces:
    """Examples in index order: uint8 images [N, 64, 64, 3], uint8 label maps [N, 64, 64], int32 beard and age [N]."""

    images: np.ndarray
    labels: np.ndarray
    beard: np.ndarray
    age: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index) -> ToyFaces:
        return ToyFaces(self.images[index], self.labels[index], self.beard[index], self.age[index])


def load_toy_faces(data_dir: str | os.PathLike) -> ToyFaces:
    """Read ``python -m cdiff_jax.data.toy_faces`` output; a missing or incomplete dataset is a one-line error."""
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"toy-face dataset {root} not found; {_TOY_FACES_HINT}")
    captions_file = root / "text" / CAPTIONS_JSON
    if not captions_file.is_file():
        raise ValueError(
            f"{root} is not a complete toy-face dataset: text/{CAPTIONS_JSON} is missing "
            f"(it is written last, so the writer did not finish); {_TOY_FACES_HINT}"
        )
    attributes_file = root / ATTRIBUTES_JSON
    if not attributes_file.is_file():
        raise ValueError(f"{root} is not a complete toy-face dataset: {ATTRIBUTES_JSON} is missing; {_TOY_FACES_HINT}")
    names = [f"{i}.png" for i in range(len(json.loads(captions_file.read_text())))]
    attributes = json.loads(attributes_file.read_text())
    missing = [f"{kind}/{n}" for n in names for kind in ("image", "mask") if not (root / kind / n).is_file()]
    missing += [f"{ATTRIBUTES_JSON}[{n}]" for n in names if n not in attributes]
    if missing:
        raise ValueError(
            f"{root} is not a complete toy-face dataset: {len(missing)} of its {len(names)} examples' "
            f"files are missing (first: {missing[0]}); {_TOY_FACES_HINT}"
        )
    images = np.empty((len(names), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty((len(names), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i, name in enumerate(names):
        image = np.asarray(open_image(root / "image" / name, f"toy face {root / 'image' / name}", "RGB"))
        label_map = load_label_map(root / "mask" / name)
        if image.shape != images.shape[1:] or label_map.shape != labels.shape[1:]:
            raise ValueError(
                f"{root}: example {name} has image {image.shape} and mask {label_map.shape}; "
                f"toy faces are {IMAGE_SIZE}x{IMAGE_SIZE}"
            )
        images[i], labels[i] = image, label_map
    beard = np.array([attributes[n]["beard"] for n in names], np.int32)
    age = np.array([attributes[n]["age"] for n in names], np.int32)
    return ToyFaces(images, labels, beard, age)


def split_held_out(data: ToyFaces, test_size: int) -> tuple[ToyFaces, ToyFaces]:
    """(train, held out): the last `test_size` examples in index order, like the diffusion models' test split."""
    if type(test_size) is not int or not 1 <= test_size < len(data):
        raise ValueError(f"test size must be an int in 1..{len(data) - 1} for {len(data)} examples, got {test_size!r}")
    return data.take(slice(0, len(data) - test_size)), data.take(slice(len(data) - test_size, len(data)))


# ----------------------------------------------------------------------------------------------
# Training.


def class_weights(labels: np.ndarray) -> np.ndarray:
    """float32 [19]: frequency**-CLASS_WEIGHT_POWER per class in `labels`, scaled so that the average
    pixel weighs 1 (classes that never occur weigh 0)."""
    freq = np.bincount(labels.ravel(), minlength=NUM_CLASSES) / labels.size
    present = freq > 0
    weights = np.zeros(NUM_CLASSES)
    weights[present] = freq[present] ** -CLASS_WEIGHT_POWER
    return (weights / (freq * weights).sum()).astype(np.float32)


# Mirroring an image swaps which eye, brow and ear is on the image's left, so their labels swap too.
_MIRRORED_CLASS = np.arange(NUM_CLASSES, dtype=np.uint8)
for _left, _right in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
    _a, _b = CLASS_NAMES.index(_left), CLASS_NAMES.index(_right)
    _MIRRORED_CLASS[_a], _MIRRORED_CLASS[_b] = _b, _a


def mirror(data: ToyFaces, which: np.ndarray) -> ToyFaces:
    """Flip the examples where `which` (shaped like `data.beard`) is true left to right, labels included.

    Toy faces are symmetric in distribution (centre, head turn, lighting), so a mirrored face is as
    likely as the original and its beard and age are unchanged: free extra training data.
    """
    images = np.where(which[..., None, None, None], data.images[..., ::-1, :], data.images)
    labels = np.where(which[..., None, None], _MIRRORED_CLASS[data.labels[..., ::-1]], data.labels)
    return ToyFaces(images, labels, data.beard, data.age)


def _losses(judges: Judges, batch: dict, weights: jax.Array) -> dict[str, jax.Array]:
    images = from_uint8(batch["images"])
    labels = batch["labels"].astype(jnp.int32)
    ce = optax.softmax_cross_entropy_with_integer_labels
    beard, age = judges.classifier(images)
    return {
        "parser": (ce(judges.parser(images), labels) * weights[labels]).mean(),
        "beard": ce(beard, batch["beard"]).mean(),
        "age": ce(age, batch["age"]).mean(),
    }


@jax.jit(static_argnames=("graphdef", "tx", "policy"), donate_argnames=("state", "opt_state"))
def _train_steps(graphdef, state, opt_state, batches, weights, tx, policy: LoopPolicy):
    """One Adam step per leading entry of `batches`. The parameters of the two judges are disjoint, so
    minimising the sum of their losses with one Adam is training each on its own."""

    def total(state, batch):
        losses = _losses(nnx.merge(graphdef, state), batch, weights)
        return sum(losses.values()), losses

    def one_step(carry, batch):
        state, opt_state = carry
        (loss, losses), grads = jax.value_and_grad(total, has_aux=True)(state, batch)
        updates, opt_state = tx.update(grads, opt_state, state)
        return (optax.apply_updates(state, updates), opt_state), losses, (loss, optax.tree.norm(grads))

    (state, opt_state), losses, applied = run_steps(one_step, (state, opt_state), batches, policy)
    return state, opt_state, losses, applied


def _batch_order(n: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """[steps, batch] example indices: a fresh permutation per epoch, so every example is seen equally often."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch // n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch].reshape(steps, batch)


def fit(
    judges: Judges,
    data: ToyFaces,
    *,
    steps: int,
    batch: int,
    seed: int = 0,
    learning_rate: float = 3e-3,
    steps_per_call: int | None = None,
    progress: bool = True,
) -> tuple[Judges, dict[str, np.ndarray]]:
    """Train both judges in place for `steps` Adam steps (warmup, then cosine decay) on randomly
    mirrored examples; returns them and the per-step losses {"parser", "beard", "age"}, float [steps].

    `steps_per_call` defaults to the loop policy's. A non-finite loss or gradient raises `NonFiniteStep`
    with the judges left at the last good state."""
    for name, value in (("steps", steps), ("batch", batch)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        learning_rate,
        warmup_steps=max(1, min(100, steps // 10)),
        decay_steps=steps,
        end_value=learning_rate * 0.02,
    )
    tx = adam(schedule)
    policy = loop_policy()
    steps_per_call = steps_per_call or policy.judge_steps_per_call
    graphdef, state = nnx.split(judges)
    opt_state = tx.init(state)
    order = _batch_order(len(data), steps, batch, seed)
    flips = np.random.default_rng([seed, 1]).random(order.shape) < 0.5
    weights = class_weights(data.labels)
    line = bar(steps, "training the judges") if progress else None
    history = []
    for start in range(0, steps, steps_per_call):
        chunk = mirror(data.take(order[start : start + steps_per_call]), flips[start : start + steps_per_call])
        batches = {"images": chunk.images, "labels": chunk.labels, "beard": chunk.beard, "age": chunk.age}
        state, opt_state, losses, applied = _train_steps(graphdef, state, opt_state, batches, weights, tx, policy)
        rejected = first_rejected(applied)
        if rejected is not None:
            nnx.update(judges, state)
            raise NonFiniteStep(
                f"non-finite judge loss or gradient at step {start + rejected + 1}; the judges hold "
                "the last good parameters (check the data and the learning rate)",
                start + rejected + 1,
                state,
            )
        history.append(jax.device_get(losses))
        if line:
            done = start + len(chunk.images)
            line.set_postfix({k: f"{v[-1]:.4g}" for k, v in history[-1].items()}, refresh=False)
            line.update(done - line.n)
    if line:
        line.close()
    nnx.update(judges, state)
    return judges, {k: np.concatenate([h[k] for h in history]) for k in history[0]}


# ----------------------------------------------------------------------------------------------
# Held-out metrics.


def evaluate(judges: Judges, data: ToyFaces) -> dict:
    """Parser pixel accuracy and mean IoU (over the classes present in the ground truth, with the
    per-class IoUs), and beard and age accuracy, over all of `data`."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)  # [true, predicted]
    beard_hits = age_hits = 0
    for start in range(0, len(data), EVAL_CHUNK):
        chunk = data.take(slice(start, start + EVAL_CHUNK))
        images = from_uint8(chunk.images)
        predicted = np.asarray(parse(judges, images))
        confusion += np.bincount(
            chunk.labels.astype(np.int64).ravel() * NUM_CLASSES + predicted.ravel(), minlength=NUM_CLASSES**2
        ).reshape(NUM_CLASSES, NUM_CLASSES)
        beard, age = attribute_predictions(judges, images)
        beard_hits += int((np.asarray(beard) == chunk.beard).sum())
        age_hits += int((np.asarray(age) == chunk.age).sum())
    hits = np.diag(confusion)
    present = confusion.sum(axis=1) > 0
    union = confusion.sum(axis=1) + confusion.sum(axis=0) - hits
    iou = {CLASS_NAMES[c]: float(hits[c] / union[c]) for c in np.flatnonzero(present)}
    return {
        "examples": len(data),
        "parser_pixel_accuracy": float(hits.sum() / confusion.sum()),
        "parser_mean_iou": float(np.mean(list(iou.values()))),
        "parser_iou": iou,
        "beard_accuracy": beard_hits / len(data),
        "age_accuracy": age_hits / len(data),
    }


def frechet_between(judges: Judges, a: ToyFaces, b: ToyFaces) -> float:
    """Frechet distance between the judges' features of two sets of toy faces (the FID stand-in)."""

    def stats(data: ToyFaces):
        feats = [
            np.asarray(features(judges, from_uint8(data.images[i : i + EVAL_CHUNK])))
            for i in range(0, len(data), EVAL_CHUNK)
        ]
        return gaussian_statistics(np.concatenate(feats))

    return frechet_distance(*stats(a), *stats(b))


# ----------------------------------------------------------------------------------------------
# The judges directory: judges.json beside orbax parser/ and classifier/, written atomically.


def _check_out_dir(directory: pathlib.Path, overwrite: bool) -> None:
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; choose a new output directory or pass --overwrite")


def save_judges(directory: str | os.PathLike, judges: Judges, info: dict, *, overwrite: bool = False) -> pathlib.Path:
    """Write the configs plus `info` (metrics, settings) to judges.json and each judge's parameters
    with orbax, into a temporary sibling that is renamed into place."""
    directory = pathlib.Path(directory).absolute()
    _check_out_dir(directory, overwrite)
    with checkpoint.atomic_directory(directory) as tmp:
        tmp.mkdir()
        (tmp / JUDGES_JSON).write_text(json.dumps({"config": judges.cfg.to_dict(), **info}, indent=1) + "\n")
        for name, module in ((PARSER_DIR, judges.parser), (CLASSIFIER_DIR, judges.classifier)):
            checkpoint.save_tree(tmp / name, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    return directory


def read_judges_info(directory: str | os.PathLike) -> dict:
    """The parsed judges.json: config, metrics and training settings."""
    directory = pathlib.Path(directory)
    info_file = directory / JUDGES_JSON
    if not info_file.is_file() or not all((directory / d).is_dir() for d in (PARSER_DIR, CLASSIFIER_DIR)):
        raise ValueError(
            f"{directory} is not a judges directory (expected {JUDGES_JSON}, {PARSER_DIR}/ and "
            f"{CLASSIFIER_DIR}/); train one with `python -m cdiff_jax.evaluation.judges DATA_DIR OUT_DIR`"
        )
    return json.loads(info_file.read_text())


def load_judges(directory: str | os.PathLike) -> Judges:
    """Rebuild both judges from judges.json and restore their parameters (onto the first local device)."""
    directory = pathlib.Path(directory).absolute()
    cfg = JudgesConfig.from_dict(read_judges_info(directory)["config"])
    judges = nnx.eval_shape(lambda: Judges(cfg, rngs=nnx.Rngs(0)))
    for name, module in ((PARSER_DIR, judges.parser), (CLASSIFIER_DIR, judges.classifier)):
        state = nnx.state(module, nnx.Param)
        nnx.replace_by_pure_dict(state, checkpoint.load_arrays(directory / name, nnx.to_pure_dict(state)))
        nnx.update(module, state)
    return judges


def train_judges(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    steps: int = 2000,
    batch: int = 32,
    test_size: int = 1000,
    seed: int = 0,
    learning_rate: float = 3e-3,
    overwrite: bool = False,
    config: JudgesConfig = JudgesConfig(),
    progress: bool = True,
) -> dict:
    """Train both judges on all but the last `test_size` toy faces, score them on those, and write
    `out_dir`. Returns what judges.json holds besides the config."""
    out_dir = pathlib.Path(out_dir).absolute()
    _check_out_dir(out_dir, overwrite)  # before the work, not after it
    started = time.monotonic()
    train, held_out = split_held_out(load_toy_faces(data_dir), test_size)
    log.info(
        "judges: %d training and %d held-out toy faces (loaded in %.1fs)",
        len(train),
        len(held_out),
        time.monotonic() - started,
    )
    judges = Judges(config, rngs=nnx.Rngs(seed))
    judges, losses = fit(
        judges, train, steps=steps, batch=batch, seed=seed, learning_rate=learning_rate, progress=progress
    )
    metrics = evaluate(judges, held_out)
    # The distance between two real sets of the held-out size: the floor a generated set is compared against.
    reference = train.take(slice(0, min(len(train), len(held_out))))
    metrics["frechet_train_vs_held_out"] = frechet_between(judges, reference, held_out)
    info = {
        "metrics": metrics,
        "training": {
            "data_dir": str(data_dir),  # as given, so a shipped record names no machine path
            "train_examples": len(train),
            "test_size": test_size,
            "steps": steps,
            "batch": batch,
            "seed": seed,
            "learning_rate": learning_rate,
            "class_weight_power": CLASS_WEIGHT_POWER,
            "mirror_augmentation": True,
            "final_losses": {k: float(v[-min(50, steps) :].mean()) for k, v in losses.items()},
            "seconds": round(time.monotonic() - started, 1),
        },
    }
    save_judges(out_dir, judges, info, overwrite=overwrite)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cdiff_jax.evaluation.judges",
        description="Train the face parser and attribute classifier that judge generated toy faces.",
    )
    p.add_argument("data_dir", help="toy-face dataset written by `python -m cdiff_jax.data.toy_faces`")
    p.add_argument("out_dir", help="output directory (judges.json, parser/, classifier/), written atomically")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps (both judges train in each)")
    p.add_argument("--batch", type=int, default=32, help="examples per step")
    p.add_argument("--test-size", type=int, default=1000, help="held-out examples: the dataset's last ones")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = p.parse_args(argv)
    configure_logging()
    try:
        info = train_judges(
            args.data_dir,
            args.out_dir,
            steps=args.steps,
            batch=args.batch,
            test_size=args.test_size,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    m = info["metrics"]
    print(
        f"held out ({m['examples']}): parser pixel accuracy {m['parser_pixel_accuracy']:.4f}, "
        f"mean IoU {m['parser_mean_iou']:.4f}; beard accuracy {m['beard_accuracy']:.4f}, "
        f"age accuracy {m['age_accuracy']:.4f}; Frechet train vs held out {m['frechet_train_vs_held_out']:.4f}"
    )
    print(f"wrote {pathlib.Path(args.out_dir).absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

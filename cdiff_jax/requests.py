"""User inputs -> validated conditions, for sampling and for editing alike.

One check per kind of input (checkpoint, caption, mask, image, sampler, step count, eta, FreeU, guidance, batch,
output folder), each failing with a one-line `UsageError` that names the flag and the fix. The
commands run them all before loading weights, compiling or writing anything, so a typo costs
seconds, not a compile, and both commands accept and refuse the same inputs in the same words.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable

import numpy as np

from cdiff_jax import conditions as cond
from cdiff_jax.checkpoint import NotACheckpointError, load_config
from cdiff_jax.config import ModalityConfig, SystemConfig
from cdiff_jax.data.images import open_image
from cdiff_jax.diffusion import solvers
from cdiff_jax.diffusion.collaboration import MODES
from cdiff_jax.modalities import kind_entry
from cdiff_jax.nn.freeu import FreeU
from cdiff_jax.paths import creatable_parent
from cdiff_jax.progress import log
from cdiff_jax.text.tokenizer import caption_tokenizer

PACKAGE = pathlib.Path(__file__).resolve().parent
# Shipped inside the package (setup.py's package_data), so the defaults work from an installed copy.
DEMO_CHECKPOINT = PACKAGE / "demo_models" / "collab"
DEMO_MASK = PACKAGE / "data" / "examples" / "face_mask.png"  # a held-out toy face's label map
DEMO_GAN = PACKAGE / "demo_models" / "gan"  # the toy StyleGAN2 DDGI drives (configs/train_demo.py:gan)
DEMO_DDGI_HEADS = PACKAGE / "demo_models" / "ddgi_heads"  # M + T trained on the demo system and the toy GAN
DEMO_TRIPLANE = PACKAGE / "demo_models" / "triplane"  # the toy tri-plane generator DDGI-3D drives (train_demo.py)
DEMO_DDGI3D_HEADS = PACKAGE / "demo_models" / "ddgi3d_heads"  # M + T trained on the demo system and DEMO_TRIPLANE
DEMO_CAPTION = "This man has beard of medium length. He is in his thirties."
# One run's samples share one compiled program and live in memory together; more images come from
# more runs with other seeds, which cost no recompilation.
MAX_BATCH = 256


class UsageError(ValueError):
    """Bad user input. The message is one line naming the input and how to fix it."""


def checkpoint_config(path) -> SystemConfig:
    """The config of our checkpoint directory at `path`, read without loading any weights."""
    try:
        return load_config(path)
    except NotACheckpointError as err:
        raise UsageError(f"--checkpoint {err}") from None


def batch(value: int) -> int:
    if not 1 <= value <= MAX_BATCH:
        raise UsageError(
            f"--batch {value}: give 1..{MAX_BATCH} samples per run; for more images, run again with "
            "other --seed values (and --out folders)"
        )
    return value


def steps(value: int, timesteps: int, solver: str = "ddim", spacing: str | None = None) -> int:
    """Steps the solver's spacing can take on a `timesteps`-step schedule."""
    try:
        solvers.visited_timesteps(solver, spacing, timesteps, value)
    except ValueError as err:
        raise UsageError(f"--steps {value}: {err}") from None
    return value


def eta(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"--eta {value}: give a number in [0, 1] (0 is deterministic DDIM, 1 the released scripts')")
    return value


def freeu(text: str | None) -> FreeU | None:
    """FreeU's factors from "b1,b2,s1,s2" (the official scripts use 1.1,1.2,1,1); None when not given."""
    if text is None:
        return None
    try:
        factors = [float(part) for part in text.split(",")]
    except ValueError:
        factors = []
    if len(factors) != 4 or not all(math.isfinite(f) for f in factors):
        raise UsageError(f"--freeu {text}: give four numbers b1,b2,s1,s2 (the official scripts': 1.1,1.2,1,1)")
    return FreeU(*factors)


SAMPLER_SHORTHANDS = {"dpmpp2m": ("dpmpp", 2), "dpmpp3m": ("dpmpp", 3)}
SAMPLER_NAMES = (*solvers.SOLVERS, *SAMPLER_SHORTHANDS)


def sampler(name: str, order: int | None, spacing: str | None, eta_value: float | None) -> dict:
    """The SamplerSettings fields (solver, order, spacing, eta) of --sampler, --order, --spacing and --eta;
    dpmpp2m and dpmpp3m are dpmpp of order 2 and 3, and eta (DDIM's noise) defaults to the released 1."""
    solver, implied = SAMPLER_SHORTHANDS.get(name, (name, None))
    if solver not in solvers.SOLVERS:
        raise UsageError(f"--sampler {name}: expected one of: {', '.join(SAMPLER_NAMES)}")
    if implied is not None and order not in (None, implied):
        raise UsageError(f"--order {order}: --sampler {name} is order {implied}; give --sampler dpmpp --order {order}")
    order = implied if implied is not None else order
    try:
        solvers.resolve(solver, order, None)
    except ValueError as err:
        raise UsageError(f"--order {order}: {err}") from None
    if spacing is not None and spacing not in solvers.SPACINGS:
        raise UsageError(f"--spacing {spacing}: expected one of: {', '.join(solvers.SPACINGS)}")
    if not solvers.SOLVERS[solver].stochastic:
        if eta_value is not None:
            raise UsageError(f"--eta {eta_value}: only DDIM draws noise; {name} is deterministic, drop --eta")
        return {"solver": solver, "order": order, "spacing": spacing, "eta": 0.0}
    return {"solver": solver, "order": order, "spacing": spacing, "eta": eta(1.0 if eta_value is None else eta_value)}


def mask_scale(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"--mask-scale {value}: give a finite number above 0 (the released scripts use 2)")
    return value


def columns(value: int) -> int:
    if value < 1:
        raise UsageError(f"--columns {value}: give at least 1 step to show")
    return value


def mode(value: str) -> str:
    if value not in MODES:
        raise UsageError(f"--mode {value!r}: give one of {', '.join(MODES)}")
    return value


def guidance(text: str, names: list[str]) -> dict[str, float]:
    """`--guidance 2` for every condition or `mask=2,text=3`; the unnamed ones keep 1 (no guidance)."""
    pairs = [p.partition("=") for p in text.split(",")] if "=" in text else [(n, "=", text) for n in names]
    scales = {name: 1.0 for name in names}
    for name, sep, value in pairs:
        name = name.strip()
        if not sep:
            raise UsageError(f"--guidance {text!r}: give one number or name=value pairs like mask=2,text=3")
        if name not in scales:
            raise UsageError(f"--guidance names {name!r}, which is not a condition of this run ({', '.join(names)})")
        try:
            scales[name] = float(value)
        except ValueError:
            raise UsageError(f"--guidance {text!r}: give one number or name=value pairs like mask=2,text=3") from None
        if not math.isfinite(scales[name]):
            raise UsageError(f"--guidance {text!r}: the scale of {name} must be a finite number")
    return scales


def caption(value: str, modality: ModalityConfig):
    """The caption's token ids [1, L] (and whether it was truncated)."""
    if not value.strip():
        raise UsageError("--text is empty; give a caption or leave out --text")
    tokens = cond.encode_captions([value], modality.encoder)
    tokenizer = caption_tokenizer(modality.encoder.max_len)
    unknown, *special = tokenizer.convert_tokens_to_ids(["[UNK]", "[CLS]", "[SEP]", "[PAD]"])
    words = [i for i in tokens.ids[0].tolist() if i not in special]
    if all(i == unknown for i in words):
        raise UsageError(f"--text {value!r} has no word the text encoder knows; write the caption in English words")
    return tokens


def drawing(path, modality: ModalityConfig, flag: str) -> np.ndarray:
    """A spatial condition from an image file (a label map, a scribble), encoded as its kind's parser does it."""
    if not pathlib.Path(path).is_file():
        raise UsageError(f"--{flag} {path}: no such file")
    try:
        with open_image(path, f"--{flag} {path}") as img:
            width, height = img.size
        if height != width:
            log.warning(
                "note: --%s %s is %dx%d, not square; it is resized to a square as the reference does, "
                "which stretches the face",
                flag,
                path,
                width,
                height,
            )
        return np.asarray(kind_entry(modality.kind).parse([path], modality.encoder))
    except (ValueError, OSError) as err:
        raise UsageError(f"--{flag} {path}: {err}") from None


def conditions(cfg: SystemConfig, requested: dict[str, str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each requested modality's encoded condition (batch of one) and the names of truncated captions."""
    if not requested:
        raise UsageError("give --mask, --text or both (and --scribble to a checkpoint with a scribble modality)")
    encoded, truncated = {}, []
    for name, value in requested.items():
        if name not in cfg.modalities:
            raise UsageError(
                f"the checkpoint has no {name} modality (it has {', '.join(sorted(cfg.modalities))}); drop --{name}"
            )
        modality = cfg.modalities[name]
        if modality.kind == "text":
            tokens = caption(value, modality)
            encoded[name] = tokens.ids
            if tokens.truncated[0]:
                truncated.append(name)
        else:
            encoded[name] = drawing(value, modality, name)
    if len(encoded) > 1 and not all(cfg.modalities[n].diffuser for n in encoded):
        raise UsageError(
            "two conditions need a collaborative checkpoint (with dynamic diffusers); give one of "
            "--mask and --text, or a codiff checkpoint"
        )
    return encoded, truncated


def size_multiple(cfg: SystemConfig, names) -> int:
    """What image sides must be multiples of: the autoencoder's and the deepest UNet's downsampling."""
    unets = [u for n in names for u in (cfg.modalities[n].expert, cfg.modalities[n].diffuser) if u is not None]
    return cfg.autoencoder.downsample_factor * max(2 ** (len(u.channel_mult) - 1) for u in unets)


def image(path, multiple: int) -> np.ndarray:
    """The face at `path` as float32 [1, H, W, 3] in [-1, 1], unresized like the reference; H and W
    must be multiples of `multiple` (see `size_multiple`)."""
    path = pathlib.Path(path)
    try:
        pixels = np.asarray(open_image(path, f"--image {path}", "RGB"), np.float32)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    h, w = pixels.shape[:2]
    if h % multiple or w % multiple:
        raise UsageError(
            f"--image {path} is {w}x{h}; this model needs sides that are multiples of {multiple} "
            f"(crop or resize it, e.g. to {max(multiple, h - h % multiple)} pixels square)"
        )
    return pixels[None] / 127.5 - 1.0


def output_folder(path, is_ours: Callable[[pathlib.Path], bool]) -> pathlib.Path:
    """`path` as an output folder: absent, empty, or one `is_ours` recognises (a previous run's, which
    may be replaced), and inside a folder we can create folders in. Leaves nothing behind."""
    path = pathlib.Path(path).absolute()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--out {path} is a file; give a folder path")
        if any(path.iterdir()) and not is_ours(path):
            raise UsageError(f"--out {path} holds files that are not from this command; choose a new --out")
    try:
        creatable_parent(path)
    except OSError as err:
        raise UsageError(
            f"--out {path}: cannot create a folder in {err.filename or path.parent} ({err.strerror}); "
            "choose another --out"
        ) from None
    return path

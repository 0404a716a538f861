"""Shared test fixtures: the reference fixture root and a relative-error helper."""

import atexit
import json
import os
import pathlib
import shutil
import struct
import tempfile
import zlib

# One XLA compilation cache for the whole run, set before JAX is imported: the two workers and every
# subprocess a test starts (train.py, sample.py, ...) compile many of the same programs, and each is then
# compiled once (BENCHMARKS.md, "Test suite"). The run's own directory, removed at exit; a
# JAX_COMPILATION_CACHE_DIR set by the caller is used as it is and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cdiff_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402 -- after the cache settings above
import numpy as np
import pytest
from flax import nnx
from torch_files import full_file

from cdiff_jax.nn.lpips import LPIPS_VGG_CONV_INDICES, SCALE, SHIFT, TAPPED_WIDTHS, VGG16_LAYOUT
from cdiff_jax.noise import normal  # jax.random.normal's draw, compiled in a fraction of its time
from cdiff_jax.weights.layout import to_flax_layout

REPO = pathlib.Path(__file__).resolve().parents[1]
pytest_plugins = ("trainer_runs",)  # the trainer modules' tiny dataset fixture (`data_dir`)


def reference_root() -> pathlib.Path:
    """Root of the official-code fixtures (CDIFF_REFERENCE_FIXTURES, default ../shared/fixtures)."""
    root = os.environ.get("CDIFF_REFERENCE_FIXTURES", str(REPO.parent / "shared" / "fixtures"))
    return pathlib.Path(root)


@pytest.fixture(scope="session")
def fixtures_root() -> pathlib.Path:
    """The fixture root; a missing one fails the test (not a skip: parity is a feature) with the fix in one line."""
    root = reference_root()
    if not (root / "manifest.json").exists():
        pytest.fail(
            f"reference fixtures of the official code not found at {root} (no manifest.json): set "
            "CDIFF_REFERENCE_FIXTURES to the fixture root, or deselect the parity tests",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drops jax's compiled programs after each module. An XLA:CPU executable holds about 14 memory maps while
    jax keeps it, and a worker that kept every module's reached the kernel's vm.max_map_count (65530) part-way
    through the suite: `Failed to materialize symbols` or an abort in whichever test compiled next."""
    yield
    jax.clear_caches()


# --- an evaluation network's reference folder, named by the test module's FIXTURE -------------


@pytest.fixture(scope="module")
def folder(fixtures_root, request) -> pathlib.Path:
    return fixtures_root / request.module.FIXTURE


@pytest.fixture(scope="module")
def reference(folder) -> dict[str, np.ndarray]:
    """The original code's inputs and outputs (io.npz)."""
    return dict(np.load(folder / "io.npz"))


@pytest.fixture(scope="module")
def weight_file(folder, tmp_path_factory) -> pathlib.Path:
    """The full weight file rebuilt from the folder's recipe, in its real format and under its real name."""
    return full_file(folder, tmp_path_factory.mktemp(folder.name))


def unmapped_real_keys(folder: pathlib.Path, model, mapping: dict[str, str]) -> set[str]:
    """The real checkpoint's keys (real_manifest.json) that no variable of `model` reads, after checking that
    the map is one-to-one and every mapped key has the variable's shape in our layout."""
    manifest = json.loads((folder / "real_manifest.json").read_text())["keys"]
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        key = mapping[".".join(map(str, path))]
        shape = to_flax_layout(np.zeros(manifest[key]["shape"], np.float32), str(path[-1])).shape
        assert shape == tuple(variable.shape), key
    assert len(set(mapping.values())) == len(mapping)
    return set(manifest) - set(mapping.values())


def assert_close_rel(actual, expected, tol=1e-5, name="array"):
    """max|actual - expected| / max|expected| <= tol, the parity criterion of the project."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(np.abs(expected).max(), 1e-30)
    err = np.abs(actual - expected).max() / scale
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


# --- reference systems assembled from the fixture folders -------------------------------------

_CONFIG_YAML = {
    "vae": "autoencoder/config.yaml",
    "text": "text_unet/config.yaml",
    "mask": "mask_unet/config.yaml",
    "codiff": "collab_ddim/config.yaml",
}


def assemble_state_dict(root: pathlib.Path, kind: str, fmt: str) -> dict[str, np.ndarray]:
    """The full official state dict of `kind`, put together from the per-folder weight files.

    The fixtures store each component's weights once, in its own folder; the manifest in
    collab_ddim/ names every key of the complete official checkpoints.
    """
    import json

    from cdiff_jax.weights.state_dict_io import read_state_dict

    filename = "model.ckpt" if fmt == "ckpt" else "model.safetensors"
    cache: dict[str, dict[str, np.ndarray]] = {}

    def folder(name: str) -> dict[str, np.ndarray]:
        if name not in cache:
            cache[name] = read_state_dict(root / name / filename).tensors
        return cache[name]

    if kind == "vae":
        return dict(folder("autoencoder"))
    manifest = json.loads((root / "collab_ddim" / "state_dict_manifest.json").read_text())
    if kind == "codiff":
        return {key: folder(src["folder"])[src["key"]] for key, src in manifest["keys"].items()}
    entries = manifest[f"{kind}_ldm_keys"]
    return {key: folder(src_folder)[src_key] for key, (src_folder, src_key) in entries.items()}


def reference_config(root: pathlib.Path, kind: str):
    from cdiff_jax.convert.official_config import load_official_yaml

    return load_official_yaml(root / _CONFIG_YAML[kind])


_SYSTEMS: dict = {}


def reference_system(root: pathlib.Path, kind: str, fmt: str = "safetensors"):
    """Our system converted from the fixture weights (cached: conversion is the slow part)."""
    from cdiff_jax.convert.converter import system_from_state_dict

    key = (str(root), kind, fmt)
    if key not in _SYSTEMS:
        tensors = assemble_state_dict(root, kind, fmt)
        _SYSTEMS[key] = system_from_state_dict(tensors, reference_config(root, kind))[0]
    return _SYSTEMS[key]


def with_forms(module, forms):
    """The same UNet or autoencoder (same weights) with its kernels computed in `forms`."""
    graphdef = nnx.split(nnx.eval_shape(lambda: type(module)(module.cfg, rngs=nnx.Rngs(0), forms=forms)))[0]
    return nnx.merge(graphdef, nnx.state(module))


def nhwc(x):
    """NCHW (as the fixtures store images and latents) -> NHWC (as our models take them)."""
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


# --- LPIPS weights in the official layout, random ------------------------------------------------

LPIPS_PREFIX = "loss.perceptual_loss."


def lpips_state_dict(rng) -> dict[str, np.ndarray]:
    """Random LPIPS weights under LDM's key names and torch layouts."""
    tensors, width, conv = {}, 3, 0
    slice_ends = (4, 9, 16, 23, 30)
    for spec in VGG16_LAYOUT:
        if spec == "M":
            continue
        index = LPIPS_VGG_CONV_INDICES[conv]
        s = next(i for i, end in enumerate(slice_ends, 1) if index < end)
        tensors[f"{LPIPS_PREFIX}net.slice{s}.{index}.weight"] = rng.normal(
            0, (2 / (9 * width)) ** 0.5, (spec, width, 3, 3)
        )
        tensors[f"{LPIPS_PREFIX}net.slice{s}.{index}.bias"] = rng.normal(0, 0.1, (spec,))
        width, conv = spec, conv + 1
    for k, w in enumerate(TAPPED_WIDTHS):
        tensors[f"{LPIPS_PREFIX}lin{k}.model.1.weight"] = np.abs(rng.normal(0, 0.1, (1, w, 1, 1)))
    tensors[f"{LPIPS_PREFIX}scaling_layer.shift"] = np.asarray(SHIFT).reshape(1, 3, 1, 1)
    tensors[f"{LPIPS_PREFIX}scaling_layer.scale"] = np.asarray(SCALE).reshape(1, 3, 1, 1)
    tensors["encoder.conv_in.weight"] = np.zeros((4, 3, 3, 3))  # the rest of an autoencoder checkpoint
    return {k: v.astype(np.float32) for k, v in tensors.items()}


def with_random_zero_layers(module, seed: int = 11):
    """LDM zero-initialises the layers that end each block, which makes a fresh UNet ignore its input
    and context; random values there make outputs (and gradients) depend on everything."""
    state = nnx.state(module, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
    nnx.update(
        module, jax.tree.map(lambda p: p if np.any(np.asarray(p)) else 0.05 * normal(next(keys), p.shape), state)
    )
    return module


def png_header_only(path, width: int, height: int) -> None:
    """A PNG of a few bytes that declares width x height pixels (grayscale) and holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )

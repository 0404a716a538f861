"""Torch-free writers of `torch.save` archives, and the evaluation fixtures' full state dicts.

The opcodes mirror what torch.save emits (protocol 2; see the data.pkl of any fixture model.ckpt),
so layouts torch would produce can be tested without it. The evaluation fixtures ship their large
tensors as a numpy recipe (`recipe.py` at the fixture root, EVAL_README.md); `fixture_state_dict`
rebuilds the full dict and `write_state_dict` writes it in the real file's format.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import struct
import tracemalloc
import zipfile

import numpy as np

from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
}


def pickled_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def pickled_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def pickled_ints(values) -> bytes:
    return b"(" + b"".join(pickled_int(v) for v in values) + b"t"


def pickled_dict(items: dict[str, bytes], ordered: bool = False) -> bytes:
    start = b"ccollections\nOrderedDict\n)R(" if ordered else b"}("
    return start + b"".join(pickled_str(k) + v for k, v in items.items()) + b"u"


def pickled_tensor(storage_type: str, key: str, numel: int, offset: int, size, stride) -> bytes:
    """Pickled ``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    storage = b"(" + pickled_str("storage") + b"ctorch\n" + storage_type.encode() + b"\n" + pickled_str(key)
    storage += pickled_str("cpu") + pickled_int(numel) + b"tQ"
    hooks = b"ccollections\nOrderedDict\n)R"
    args = storage + pickled_int(offset) + pickled_ints(size) + pickled_ints(stride) + b"\x89" + hooks
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"


def write_archive(path, top: bytes, storages: dict[str, bytes], byteorder: bytes | None = b"little"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + top + b".")
        if byteorder is not None:
            archive.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", b"3\n")
    return path


def write_state_dict(path, tensors: dict[str, np.ndarray], ordered: bool = False):
    """`torch.save(state_dict, path)` for contiguous numpy tensors, one storage per tensor, dtypes kept."""
    entries, storages = {}, {}
    for i, (key, value) in enumerate(tensors.items()):
        value = np.ascontiguousarray(value).reshape(np.shape(value))  # 0-d tensors stay 0-d
        stride = [int(np.prod(value.shape[d + 1:])) for d in range(value.ndim)]
        name = _STORAGE_NAMES[value.dtype]
        entries[key] = pickled_tensor(name, str(i), value.size, 0, value.shape, stride)
        storages[str(i)] = value.astype(value.dtype.newbyteorder("<")).tobytes()
    return write_archive(path, pickled_dict(entries, ordered), storages)


def fixture_state_dict(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """An evaluation fixture's full state dict in the file's key order and dtypes, by the set's recipe."""
    spec = importlib.util.spec_from_file_location("fixture_recipe", folder.parent / "recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe.state_dict(str(folder))


def full_file(folder: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    """The fixture's full weight file, rebuilt and written in its real format under its real name."""
    described = json.loads((folder / "recipe.json").read_text())["full_file"]
    ordered = described.get("container") == "OrderedDict"
    return write_state_dict(destination / described["name"], fixture_state_dict(folder), ordered=ordered)


def assert_damage_is_read_or_refused(raw: bytes, path, trials: int, seed: int) -> None:
    """Random truncations and byte flips of a real file: a CheckpointReadError of one line naming the file, or (a
    flip inside tensor data) a successful read; never another exception, never large memory; some refused."""
    rng = np.random.default_rng(seed)
    outcomes = set()
    for trial in range(trials):
        data = bytearray(raw)
        if trial % 2:
            data = data[:int(rng.integers(0, len(raw)))]
        else:
            for at in rng.integers(0, len(raw), size=4):
                data[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        tracemalloc.start()
        try:
            read_state_dict(path)
            outcomes.add("read")
        except CheckpointReadError as err:
            assert str(path) in str(err) and "\n" not in str(err), err
            outcomes.add("refused")
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 8 * len(raw) + (64 << 20), (trial, peak)
    assert "refused" in outcomes

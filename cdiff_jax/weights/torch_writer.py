"""Write ``torch.save`` zip archives without torch: the writing side of ``state_dict_io``'s restricted reader.

An export to the official format must be a file that ``torch.load`` (weights-only too) reads, so the pickle uses
only what torch.save's own pickle of a state dict uses (protocol 2, ``_rebuild_tensor_v2`` on typed storages,
plain and ordered dicts), one little-endian storage record per tensor, each starting at a multiple of 64 bytes as
torch.save aligns them (so a loader may map them in place). The opcode builders are public because the reader's
tests compose unsafe and damaged archives from them.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Mapping

import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
}
RECORD_ALIGNMENT = 64
_LOCAL_HEADER_BYTES = 30  # a zip local file header before its name and extra field
_PADDING_FIELD = b"FB"  # the extra-field id torch.save pads records with


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


def write_archive(path, top: bytes, storages: Mapping[str, bytes | np.ndarray], byteorder: bytes | None = b"little"):
    """The zip archive of a pickled object `top` and its storage records (bytes, or arrays written as they lie in
    memory)."""
    with open(path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
        _write_record(archive, handle, "data.pkl", b"\x80\x02" + top + b".")
        if byteorder is not None:
            _write_record(archive, handle, "byteorder", byteorder)
        for key, raw in storages.items():
            _write_record(archive, handle, f"data/{key}", raw)
        _write_record(archive, handle, "version", b"3\n")
    return path


def _write_record(archive: zipfile.ZipFile, handle, name: str, data) -> None:
    """One stored record whose data starts at a multiple of RECORD_ALIGNMENT: its extra field pads the header."""
    name = f"archive/{name}"
    start = handle.tell() + _LOCAL_HEADER_BYTES + len(name.encode()) + 4  # 4: the padding field's own header
    padding = -start % RECORD_ALIGNMENT
    info = zipfile.ZipInfo(name)  # a fixed date: the same tensors give the same bytes
    info.extra = _PADDING_FIELD + struct.pack("<H", padding) + b"Z" * padding
    archive.writestr(info, data)


def write_state_dict(path, tensors: Mapping[str, np.ndarray], ordered: bool = False, lightning: bool = False):
    """`torch.save(state_dict, path)` (with `lightning`, `torch.save({"state_dict": state_dict}, path)`, the
    layout of a Lightning .ckpt) for numpy tensors, one storage per tensor, dtypes kept."""
    entries, storages = {}, {}
    for i, (key, value) in enumerate(tensors.items()):
        value = np.asarray(value)
        stride = [int(np.prod(value.shape[d + 1 :])) for d in range(value.ndim)]
        name = _STORAGE_NAMES[value.dtype.newbyteorder("=")]
        entries[key] = pickled_tensor(name, str(i), value.size, 0, value.shape, stride)
        storages[str(i)] = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
    top = pickled_dict(entries, ordered)
    return write_archive(path, pickled_dict({"state_dict": top}) if lightning else top, storages)

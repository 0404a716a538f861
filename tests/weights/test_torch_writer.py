"""The torch-free writer: what it writes reads back exactly, laid out as torch.save lays out its archives."""

import struct
import zipfile

import numpy as np
import pytest

from cdiff_jax.weights.state_dict_io import read_state_dict
from cdiff_jax.weights.torch_writer import RECORD_ALIGNMENT, write_state_dict


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    return {
        "conv.weight": np.transpose(conv, (3, 2, 0, 1)),  # a strided view, as an export's layout change gives
        "half": rng.normal(size=(2, 3)).astype(np.float16),
        "double": rng.normal(size=4),
        "steps": np.array(7, np.int64),  # 0-d
        "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
        "big_endian": np.arange(3, dtype=">f4"),
        "empty": np.zeros((0, 4), np.float32),
    }


@pytest.mark.parametrize("form", ["plain", "ordered", "lightning"])
def test_what_is_written_reads_back_exactly(tmp_path, form):
    tensors = _tensors()
    path = write_state_dict(tmp_path / "model.ckpt", tensors, ordered=form == "ordered", lightning=form == "lightning")
    loaded = read_state_dict(path)
    assert list(loaded.tensors) == list(tensors) and loaded.extras == {}
    for key, value in tensors.items():
        got = loaded.tensors[key]
        assert got.shape == value.shape and got.dtype == value.dtype.newbyteorder("="), key
        np.testing.assert_array_equal(got, value)


def _data_offsets(path) -> dict[str, int]:
    """Where each record's data starts: after its local header, name and extra field."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        offsets = {}
        for info in archive.infolist():
            handle.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", handle.read(4))
            offsets[info.filename] = info.header_offset + 30 + name_length + extra_length
        return offsets


def test_records_are_aligned_as_torch_aligns_them(fixtures_root, tmp_path):
    """The torch-written fixture starts every record's data at a multiple of 64 bytes; so does the writer, with the
    fixture's own tensors, which read back identical; the same tensors give the same bytes."""
    fixture = fixtures_root / "autoencoder" / "model.ckpt"
    assert all(offset % RECORD_ALIGNMENT == 0 for offset in _data_offsets(fixture).values())
    tensors = read_state_dict(fixture).tensors
    ours = write_state_dict(tmp_path / "a.ckpt", tensors, lightning=True)
    offsets = _data_offsets(ours)
    assert len(offsets) == len(tensors) + 3 and all(offset % RECORD_ALIGNMENT == 0 for offset in offsets.values())
    for key, value in read_state_dict(ours).tensors.items():
        np.testing.assert_array_equal(value, tensors[key])
    assert write_state_dict(tmp_path / "b.ckpt", tensors, lightning=True).read_bytes() == ours.read_bytes()


def test_archives_past_the_zip_limit_use_zip64_offsets(tmp_path, monkeypatch):
    """A released 512 collaborative model is 4.1 GiB: records past 4 GiB need zip64 offsets. With the limit lowered
    to 4 KiB the same code path is taken by a small archive, which still reads back and stays aligned."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1 << 12)
    tensors = {f"w{i}": np.full((16, 8), i, np.float32) for i in range(16)}  # 512-byte records, 8 KiB in all
    path = write_state_dict(tmp_path / "model.ckpt", tensors, lightning=True)
    monkeypatch.undo()
    assert b"PK\x06\x06" in path.read_bytes()  # the zip64 end of central directory
    assert all(offset % RECORD_ALIGNMENT == 0 for offset in _data_offsets(path).values())
    for key, value in read_state_dict(path).tensors.items():
        np.testing.assert_array_equal(value, tensors[key])

"""Tests for reading torch ``.ckpt`` (without torch) and ``.safetensors`` state dicts."""

import os
import pickle
import struct
import sys
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file
from torch_files import (
    assert_damage_is_read_or_refused,
    pickled_dict,
    pickled_int,
    pickled_str,
    pickled_tensor,
    write_archive,
)

from cdiff_jax.weights.state_dict_io import (
    CheckpointReadError,
    LoadedCheckpoint,
    UnsafeCheckpointError,
    read_state_dict,
    read_tensor,
    rebuild_tensor,
)

# --- Reference fixtures: the .ckpt written by torch and the .safetensors must read identically.


def test_fixture_ckpt_matches_safetensors(fixtures_root):
    folders = sorted(
        d for d in fixtures_root.iterdir() if (d / "model.ckpt").is_file() and (d / "model.safetensors").is_file()
    )
    assert folders, f"no folder under {fixtures_root} has both model.ckpt and model.safetensors"
    for folder in folders:
        ckpt = read_state_dict(folder / "model.ckpt")
        st = read_state_dict(folder / "model.safetensors")
        assert isinstance(ckpt, LoadedCheckpoint)
        assert (ckpt.source_format, st.source_format) == ("ckpt", "safetensors")
        assert ckpt.tensors.keys() == st.tensors.keys(), folder.name
        assert ckpt.extras["global_step"] == 0, folder.name
        for key, value in ckpt.tensors.items():
            expected = st.tensors[key]
            assert value.dtype == np.float32 and expected.dtype == np.float32, f"{folder.name}: {key}"
            assert value.shape == expected.shape, f"{folder.name}: {key}"
            assert value.tobytes() == expected.tobytes(), f"{folder.name}: {key} differs"


# --- Layouts: strides, offsets, shared storages, dtypes, byte order, where the state dict lives.


def test_rebuild_tensor_matches_numpy_views():
    storage = np.arange(24, dtype=np.float32)
    transposed = rebuild_tensor(storage, 0, (6, 4), (1, 6), False, {})
    np.testing.assert_array_equal(transposed, storage.reshape(4, 6).T)
    assert transposed.flags.c_contiguous and transposed.flags.writeable

    sliced = rebuild_tensor(storage, 3, (2, 3), (8, 2))
    np.testing.assert_array_equal(sliced, [[3 + 8 * i + 2 * j for j in range(3)] for i in range(2)])
    np.testing.assert_array_equal(rebuild_tensor(storage, 5, (), ()), np.float32(5))
    assert rebuild_tensor(storage, 24, (0, 3), (3, 1)).shape == (0, 3)


@pytest.mark.parametrize(
    "offset, size, stride",
    [(0, (5, 5), (5, 1)), (20, (5,), (1,)), (-1, (2,), (1,)), (0, (2, 2), (1,)), (0, (2,), (-1,))],
)
def test_rebuild_tensor_rejects_layouts_outside_storage(offset, size, stride):
    with pytest.raises(pickle.UnpicklingError):
        rebuild_tensor(np.zeros(24, np.float32), offset, size, stride)


def test_archive_with_strided_shared_and_int_tensors(tmp_path):
    floats = np.arange(12, dtype=np.float32)
    longs = np.array([10, -2, 2**40], dtype=np.int64)
    state_dict = {
        "w_t": pickled_tensor("FloatStorage", "0", 12, 0, (4, 3), (1, 4)),
        "row": pickled_tensor("FloatStorage", "0", 12, 4, (4,), (1,)),
        "steps": pickled_tensor("LongStorage", "1", 3, 2, (), ()),
    }
    top = pickled_dict(
        {
            "state_dict": pickled_dict(state_dict),
            "global_step": pickled_int(7),
            "pytorch-lightning_version": pickled_str("1.4.2"),
            "optimizer_states": b"]",
            "buffer": pickled_tensor("LongStorage", "1", 3, 0, (3,), (1,)),
        }
    )
    path = write_archive(tmp_path / "model.ckpt", top, {"0": floats.tobytes(), "1": longs.tobytes()})

    loaded = read_state_dict(path)
    assert set(loaded.tensors) == {"w_t", "row", "steps"}
    np.testing.assert_array_equal(loaded.tensors["w_t"], floats.reshape(3, 4).T)
    assert loaded.tensors["w_t"].flags.c_contiguous
    np.testing.assert_array_equal(loaded.tensors["row"], floats[4:8])
    assert loaded.tensors["steps"].dtype == np.int64 and loaded.tensors["steps"] == 2**40
    assert loaded.extras["global_step"] == 7
    assert loaded.extras["pytorch-lightning_version"] == "1.4.2"
    assert isinstance(loaded.extras["optimizer_states"], str)
    assert isinstance(loaded.extras["buffer"], str)


def test_big_endian_bfloat16_and_flat_state_dict(tmp_path):
    values = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    bf16 = values.astype(ml_dtypes.bfloat16)
    top = pickled_dict(
        {
            "a": pickled_tensor("FloatStorage", "0", 3, 0, (3,), (1,)),
            "b": pickled_tensor("BFloat16Storage", "1", 3, 0, (3,), (1,)),
        }
    )
    storages = {"0": values.astype(">f4").tobytes(), "1": bf16.byteswap().tobytes()}
    loaded = read_state_dict(write_archive(tmp_path / "flat.pt", top, storages, byteorder=b"big"))
    np.testing.assert_array_equal(loaded.tensors["a"], values)
    assert loaded.tensors["b"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded.tensors["b"].astype(np.float32), values)
    assert loaded.extras == {}


# --- Security: a pickle may reference only the tensor-rebuild globals; nothing else is imported or called.


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _RunsShell(f"touch {marker}")}, protocol=2)
    path = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)

    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert f"{os.system.__module__}.system" in message
    assert "must not run code" in message and str(path) in message
    assert not marker.exists()


def test_refused_module_is_not_even_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    module_dir = tmp_path / "modules"
    module_dir.mkdir()
    (module_dir / "cdiff_side_effect_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef run(): pass\n")
    monkeypatch.syspath_prepend(str(module_dir))
    top = pickled_dict({"state_dict": b"ccdiff_side_effect_mod\nrun\n)R"})
    path = write_archive(tmp_path / "evil.pth", top, {})

    with pytest.raises(UnsafeCheckpointError, match=r"cdiff_side_effect_mod\.run"):
        read_state_dict(path)
    assert not marker.exists()
    assert "cdiff_side_effect_mod" not in sys.modules


@pytest.mark.parametrize("glob", ["builtins\neval", "torch\nTensor", "numpy.core.multiarray\n_reconstruct"])
def test_refuses_globals_outside_the_allowlist(tmp_path, glob):
    top = pickled_dict({"state_dict": b"c" + glob.encode() + b"\n"})
    with pytest.raises(UnsafeCheckpointError, match=glob.replace("\n", r"\.")):
        read_state_dict(write_archive(tmp_path / "model.ckpt", top, {}))


# --- Damaged or foreign files: always CheckpointReadError with a message naming the file.


def _assert_read_error(path, fragment):
    with pytest.raises(CheckpointReadError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message
    return message


def test_truncated_real_ckpt(fixtures_root, tmp_path):
    raw = (fixtures_root / "autoencoder" / "model.ckpt").read_bytes()
    path = tmp_path / "model.ckpt"
    path.write_bytes(raw[: len(raw) // 2])
    _assert_read_error(path, "truncated")


def test_truncated_safetensors(tmp_path):
    full = tmp_path / "full.safetensors"
    save_file({"w": np.ones((4, 4), np.float32)}, str(full))
    raw = full.read_bytes()
    for cut in (4, len(raw) // 2, len(raw) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(raw[:cut])
        _assert_read_error(path, "safetensors")


def test_missing_storage_record(tmp_path):
    top = pickled_dict({"state_dict": pickled_dict({"w": pickled_tensor("FloatStorage", "0", 4, 0, (4,), (1,))})})
    _assert_read_error(write_archive(tmp_path / "model.ckpt", top, {}), "archive/data/0")


def test_short_storage_record(tmp_path):
    top = pickled_dict({"state_dict": pickled_dict({"w": pickled_tensor("FloatStorage", "0", 4, 0, (4,), (1,))})})
    _assert_read_error(write_archive(tmp_path / "model.ckpt", top, {"0": b"\0" * 8}), "too few")


def test_storage_declaring_more_than_its_record_fails_before_reading_it(tmp_path):
    """A 1 MB file whose tensor claims 1 GiB fails on the declared sizes, allocating nothing of that order."""
    numel = 2**28  # float32: 1 GiB
    huge = pickled_tensor("FloatStorage", "0", numel, 0, (numel,), (1,))
    top = pickled_dict({"state_dict": pickled_dict({"w": huge})})
    path = write_archive(tmp_path / "model.ckpt", top, {"0": b"\0" * 2**20})
    tracemalloc.start()
    try:
        _assert_read_error(path, f"too few for {numel}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24, f"peak allocation {peak} bytes"


def test_record_declaring_more_bytes_than_the_file_holds(tmp_path):
    top = pickled_dict({"state_dict": pickled_dict({"w": pickled_tensor("FloatStorage", "0", 4, 0, (4,), (1,))})})
    path = write_archive(tmp_path / "model.ckpt", top, {"0": b"\0" * 16})
    raw = bytearray(path.read_bytes())
    name = b"archive/data/0"
    entry = raw.index(b"PK\x01\x02")  # the first central directory entry
    while raw[entry + 46 : entry + 46 + len(name)] != name:  # central directory entries, in order
        entry = raw.index(b"PK\x01\x02", entry + 4)
    raw[entry + 20 : entry + 28] = struct.pack("<II", 2**30, 2**30)  # compressed and uncompressed sizes
    path.write_bytes(bytes(raw))
    _assert_read_error(path, "declares 1073741824 bytes, more than the file")


def test_compressed_records_are_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}.")
    _assert_read_error(path, "compressed")


def test_layout_outside_storage(tmp_path):
    top = pickled_dict({"state_dict": pickled_dict({"w": pickled_tensor("FloatStorage", "0", 4, 0, (4,), (2,))})})
    _assert_read_error(write_archive(tmp_path / "model.ckpt", top, {"0": b"\0" * 16}), "reaches past")


def test_missing_path_and_directory(tmp_path):
    _assert_read_error(tmp_path / "nope.ckpt", "no such file")
    folder = tmp_path / "dir.ckpt"
    folder.mkdir()
    _assert_read_error(folder, "directory")


def test_empty_random_and_plain_pickle_files(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _assert_read_error(empty, "empty")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_read_error(noise, "not a zip archive")
    plain = tmp_path / "plain.ckpt"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    _assert_read_error(plain, "not a zip archive")


def test_legacy_torch_format(tmp_path):
    path = tmp_path / "old.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2))
    _assert_read_error(path, "legacy")


def test_zip_that_is_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    _assert_read_error(path, "data.pkl")


@pytest.mark.parametrize(
    "top, fragment",
    [
        (b"]", "not a dict"),
        (pickled_dict({"global_step": pickled_int(0)}), "no state dict found"),
        (b"}", "no state dict found"),
        (pickled_dict({"state_dict": b"}"}), "no tensors"),
        (pickled_dict({"state_dict": pickled_dict({"w": pickled_int(3)})}), "'w'"),
    ],
)
def test_pickles_without_a_state_dict(tmp_path, top, fragment):
    _assert_read_error(write_archive(tmp_path / "model.ckpt", top, {}), fragment)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    message = _assert_read_error(path, ".bin")
    assert ".ckpt" in message and ".safetensors" in message


# --- read_tensor: a file whose top-level object is a single tensor (official mask .pt files).


def test_read_tensor_single_strided_tensor(tmp_path):
    longs = np.arange(6, dtype=np.int64)
    top = pickled_tensor("LongStorage", "0", 6, 0, (2, 3), (1, 2))
    path = write_archive(tmp_path / "mask.pt", top, {"0": longs.tobytes()})
    tensor = read_tensor(path)
    assert tensor.dtype == np.int64
    np.testing.assert_array_equal(tensor, longs.reshape(3, 2).T)


def test_read_tensor_rejects_dicts_missing_files_and_unsafe_pickles(tmp_path):
    state = pickled_dict({"w": pickled_tensor("FloatStorage", "0", 1, 0, (1,), (1,))})
    path = write_archive(tmp_path / "dict.pt", state, {"0": b"\0" * 4})
    with pytest.raises(CheckpointReadError, match="not a single tensor"):
        read_tensor(path)
    with pytest.raises(CheckpointReadError, match="no such file"):
        read_tensor(tmp_path / "nope.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        read_tensor(write_archive(tmp_path / "evil.pt", b"cbuiltins\neval\n", {}))


def test_fuzzed_real_ckpt_loads_or_fails_in_one_line_with_bounded_memory(fixtures_root, tmp_path):
    raw = (fixtures_root / "autoencoder" / "model.ckpt").read_bytes()
    assert_damage_is_read_or_refused(raw, tmp_path / "fuzzed.ckpt", trials=40, seed=0)

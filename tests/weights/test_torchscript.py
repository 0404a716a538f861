"""Reading TorchScript archives (``torch.jit.save``, e.g. OpenAI's released CLIP ``.pt`` files) without torch.

The archives in ``data/`` and torch's own ``torch.jit.load(path).state_dict()`` of them (``.npz``) were written
by ``data/make_torchscript.py``: our reader must give the same entries, in the same order, dtypes and values.
Unsafe and damaged archives are built here, torch-free, in the layout those real archives have.
"""

import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
from flax import nnx
from torch_files import (
    assert_damage_is_read_or_refused,
    fixture_state_dict,
    pickled_dict,
    pickled_int,
    pickled_str,
    pickled_tensor,
    write_state_dict,
)

from cdiff_jax.nn.clip import CLIP, NON_WEIGHT_KEYS
from cdiff_jax.weights.state_dict_io import (
    MAX_SCRIPT_DEPTH,
    CheckpointReadError,
    ScriptObject,
    UnsafeCheckpointError,
    read_state_dict,
    read_tensor,
)

DATA = pathlib.Path(__file__).parent / "data"
ARCHIVES = {"tower_traced_fp16.pt": "tower_traced_fp16/", "tower_scripted.pt": "archive/"}
_STORAGES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
}


# --- Torch-free writer of TorchScript-shaped archives (the layout of the real ones in data/).


def pickled_record(qualified: str, attributes: dict[str, bytes]) -> bytes:
    """A module as torch.jit.save pickles it: NEWOBJ of its ``__torch__`` class, BUILD with its attribute dict."""
    module, name = qualified.rsplit(".", 1)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n)\x81" + pickled_dict(attributes) + b"b"


def write_script_archive(path, top: bytes, storages: dict[str, bytes], folder: str = "archive", code: bool = True):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{folder}/data.pkl", b"\x80\x02" + top + b".")
        for key, raw in storages.items():
            archive.writestr(f"{folder}/data/{key}", raw)
        if code:  # compressed, as torch.jit.save writes the code; the reader must never need it
            source = "class Tower(Module):\n  __parameters__ = []\n" * 20
            archive.writestr(f"{folder}/code/__torch__.py", source, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(f"{folder}/constants.pkl", b"\x80\x02).")
        archive.writestr(f"{folder}/byteorder", b"little")
        archive.writestr(f"{folder}/version", b"3\n")
    return path


def script_archive_of(path, state_dict: dict[str, np.ndarray], folder: str = "archive"):
    """A TorchScript-shaped archive whose module tree holds ``state_dict`` (dotted keys -> nested modules)."""
    tree: dict = {}
    for key, value in state_dict.items():
        *modules, leaf = key.split(".")
        node = tree
        for module in modules:
            node = node.setdefault(module, {})
        node[leaf] = value
    storages: dict[str, bytes] = {}

    def record(node: dict, name: str) -> bytes:
        attributes = {}
        for key, value in node.items():
            if isinstance(value, np.ndarray):
                value = np.ascontiguousarray(value).reshape(value.shape)
                stride = [int(np.prod(value.shape[d + 1 :])) for d in range(value.ndim)]
                storage = str(len(storages))
                storages[storage] = value.astype(value.dtype.newbyteorder("<")).tobytes()
                attributes[key] = pickled_tensor(_STORAGES[value.dtype], storage, value.size, 0, value.shape, stride)
        attributes["training"] = b"\x89"
        for key, value in node.items():
            if isinstance(value, dict):
                attributes[key] = record(value, f"{name}.{key}")
        return pickled_record(f"__torch__.{name}", attributes)

    return write_script_archive(path, record(tree, "Model"), storages, folder)


# --- The real archives: torch's state dict, key for key.


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_real_archives_give_torchs_state_dict(name):
    path = DATA / name
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert ARCHIVES[name] + "data.pkl" in names  # the top folder is the file's stem, or "archive" for a buffer
        assert any(n.startswith(ARCHIVES[name] + "code/") for n in names)
    expected = np.load(DATA / name.replace(".pt", ".npz"))
    loaded = read_state_dict(path)
    assert loaded.source_format == "torchscript" and loaded.extras == {}
    assert list(loaded.tensors) == expected.files  # same keys, in torch's order
    for key in expected.files:
        ours, theirs = loaded.tensors[key], expected[key]
        assert (ours.dtype, ours.shape) == (theirs.dtype, theirs.shape), key
        assert ours.tobytes() == theirs.tobytes(), f"{key} differs"


def test_real_archive_details():
    """float16 throughout (as OpenAI's files), int64 0-d buffers, bias-free Linears, ModuleList/Sequential
    children, views sharing a parameter's storage, and the traced file's constants left out."""
    traced = read_state_dict(DATA / "tower_traced_fp16.pt").tensors
    assert {v.dtype for k, v in traced.items() if k != "context"} == {np.dtype(np.float16)}
    assert traced["context"].dtype == np.int64 and traced["context"].shape == () and traced["context"] == 4
    assert traced["temperature"].shape == () and "heads.1.bias" not in traced
    assert traced["blocks.1.mix.in_proj_weight"].shape == (24, 8) and "blocks.0.ff.2.weight" in traced
    with zipfile.ZipFile(DATA / "tower_traced_fp16.pt") as archive:
        assert "tower_traced_fp16/constants/0" in archive.namelist()  # a trace's tensor constant: not state
    scripted = read_state_dict(DATA / "tower_scripted.pt").tensors
    np.testing.assert_array_equal(scripted["position_row"], scripted["position"][1])
    np.testing.assert_array_equal(scripted["position_t"], scripted["position"].T)
    assert scripted["position_t"].flags.c_contiguous
    assert scripted["heads.1.weight"].dtype == np.float16 and scripted["heads.0.weight"].dtype == np.float32
    assert not any(k.startswith(("layout", "extra", "named", "where")) for k in scripted)


def test_code_and_constants_are_never_read(monkeypatch):
    """Only data.pkl, byteorder and data/ storages are opened: not the code/ folder, not constants.pkl."""
    opened = []
    original = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    for name, folder in ARCHIVES.items():
        opened.clear()
        read_state_dict(DATA / name)
        assert opened and all(
            n in (folder + "data.pkl", folder + "byteorder") or n.startswith(folder + "data/") for n in opened
        ), opened


def test_any_top_folder_name(tmp_path):
    """OpenAI's files name the folder after their own file; a renamed file keeps its folder."""
    source = DATA / "tower_traced_fp16.pt"
    renamed = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(renamed, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            info.filename = "ViT-B-32/" + info.filename.split("/", 1)[1]
            dst.writestr(info, data)
    expected = read_state_dict(source).tensors
    loaded = read_state_dict(renamed).tensors
    assert list(loaded) == list(expected)
    assert all(loaded[k].tobytes() == expected[k].tobytes() for k in expected)


def test_read_tensor_refuses_a_module():
    with pytest.raises(CheckpointReadError, match="ScriptObject, not a single tensor"):
        read_tensor(DATA / "tower_scripted.pt")


# --- OpenAI CLIP: a TorchScript-shaped float16 file of the fixture converts as its torch.save state dict does.


def test_clip_from_torchscript_archive(fixtures_root, tmp_path):
    folder = fixtures_root / "clip_tiny"
    config = json.loads((folder / "config.json").read_text())
    heads = {
        "transformer_heads": config["constructor_args"]["transformer_heads"],
        "vision_heads": config["derived"]["vision_heads"],
    }
    state = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in fixture_state_dict(folder).items()}
    jit_state = {**state, **{key: np.array(i + 7, np.int64) for i, key in enumerate(NON_WEIGHT_KEYS)}}
    archive = script_archive_of(tmp_path / "ViT-tiny.pt", jit_state, folder="ViT-tiny")
    assert read_state_dict(archive).tensors.keys() == jit_state.keys()
    from_jit = nnx.to_flat_state(nnx.state(CLIP.from_checkpoint(archive, **heads)))
    from_state_dict = nnx.to_flat_state(
        nnx.state(CLIP.from_checkpoint(write_state_dict(tmp_path / "clip.pth", state), **heads))
    )
    assert [path for path, _ in from_jit] == [path for path, _ in from_state_dict]
    for (path, ours), (_, theirs) in zip(from_jit, from_state_dict):
        np.testing.assert_array_equal(np.asarray(ours[...]), np.asarray(theirs[...]), err_msg=str(path))


# --- Security: only the module records, tensors and typed containers; nothing is imported or run.


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("how", ["reduce", "build"])
def test_torchscript_archive_with_os_system_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2)[2:-1]  # without PROTO and STOP
    if how == "reduce":
        top = pickled_record("__torch__.Model", {"training": b"\x89", "hook": payload})
    else:  # the module's own state is the payload: BUILD would hand it to __setstate__
        top = b"c__torch__\nModel\n)\x81" + payload + b"b"
    path = write_script_archive(tmp_path / "evil.pt", top, {})
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert f"{os.system.__module__}.system" in message and "must not run code" in message
    assert "torch.jit.load(path).state_dict()" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "glob",
    [
        "builtins\neval",
        "torch\nload",
        "torch.jit._pickle\nbuild_tensor_from_id",
        "__builtin__\n__import__",
        "torch.jit\nload",
    ],
)
def test_torchscript_archive_refuses_other_globals(tmp_path, glob):
    top = pickled_record("__torch__.Model", {"training": b"\x89", "x": b"c" + glob.encode() + b"\n"})
    with pytest.raises(UnsafeCheckpointError, match=glob.replace("\n", r"\.")):
        read_state_dict(write_script_archive(tmp_path / "model.pt", top, {}))


def test_script_globals_only_in_torchscript_archives(tmp_path):
    """A torch.save archive (no code/, no constants.pkl) gets no module records or typed containers."""
    for glob in (b"c__torch__\nModel\n", b"ctorch.jit._pickle\nbuild_intlist\n"):
        path = tmp_path / "model.ckpt"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"\x80\x02" + glob + b".")
        with pytest.raises(UnsafeCheckpointError, match="torch.save"):
            read_state_dict(path)


def test_script_object_is_inert():
    record = ScriptObject()
    record.__setstate__({"training": False})
    assert record.attributes == {"training": False}
    record.__setstate__(("packed", 1))  # a TorchScript class with __getstate__: kept, holds no attributes
    assert record.attributes == {}
    with pytest.raises(pickle.UnpicklingError):
        ScriptObject("os.system")
    assert not hasattr(record, "__dict__")


# --- Damaged archives: one-line CheckpointReadError naming the file and the fix.


def _assert_read_error(path, fragment):
    with pytest.raises(CheckpointReadError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message, message
    return message


def _tensor(key="0", numel=2):
    return pickled_tensor("HalfStorage", key, numel, 0, (numel,), (1,))


def test_typed_containers_and_non_tensor_attributes_are_skipped(tmp_path):
    ints = b"ctorch.jit._pickle\nbuild_intlist\n(]" + b"(" + pickled_int(3) + pickled_int(4) + b"etR"
    tagged = b"ctorch.jit._pickle\nrestore_type_tag\n(}" + pickled_str("Dict[str, int]") + b"tR"
    device = b"ctorch\ndevice\n(" + pickled_str("cuda") + pickled_int(1) + b"tR"
    tensors = b"ctorch.jit._pickle\nbuild_tensorlist\n(](" + _tensor("1") + b"etR"
    child = pickled_record(
        "__torch__.torch.nn.modules.linear.___torch_mangle_3.Linear",
        {"weight": _tensor("0"), "bias": b"N", "training": b"\x89"},
    )
    top = pickled_record(
        "__torch__.Model",
        {
            "scale": _tensor("2"),
            "training": b"\x88",
            "sizes": ints,
            "names": tagged,
            "where": device,
            "extra": tensors,
            "label": pickled_str("x"),
            "0": child,
        },
    )
    storages = {key: np.arange(2, dtype=np.float16).tobytes() for key in "012"}
    loaded = read_state_dict(write_script_archive(tmp_path / "model.pt", top, storages))
    assert list(loaded.tensors) == ["scale", "0.weight"]


def test_missing_storage_record(tmp_path):
    top = pickled_record("__torch__.Model", {"w": _tensor()})
    _assert_read_error(write_script_archive(tmp_path / "model.pt", top, {}, folder="ViT-B-32"), "ViT-B-32/data/0")


def test_compressed_data_is_refused_but_not_compressed_code(tmp_path):
    top = pickled_record("__torch__.Model", {"w": _tensor()})
    path = write_script_archive(tmp_path / "model.pt", top, {"0": b"\0" * 4})
    assert read_state_dict(path).tensors["w"].dtype == np.float16
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/data/1", b"\0" * 64, compress_type=zipfile.ZIP_DEFLATED)
    _assert_read_error(path, "archive/data/1 is compressed")


@pytest.mark.parametrize(
    "top, fragment",
    [
        (b"]", "holds a list, not a module"),
        (pickled_record("__torch__.Model", {"training": b"\x89", "k": pickled_int(3)}), "holds no tensors"),
        (b"c__torch__\nModel\n)\x81}(K\x01" + _tensor() + b"ub", "attribute named by a int"),
        (b"c__torch__\nModel\n(" + pickled_str("x") + b"tR", "corrupt"),
    ],
)
def test_malformed_module_records(tmp_path, top, fragment):
    _assert_read_error(write_script_archive(tmp_path / "model.pt", top, {"0": b"\0" * 4}), fragment)


def test_module_containing_itself(tmp_path):
    # memo slot 0 holds the record; its state refers back to it before BUILD completes
    top = b"c__torch__\nModel\n)\x81q\x00}(" + pickled_str("w") + _tensor() + pickled_str("me") + b"h\x00ub"
    _assert_read_error(write_script_archive(tmp_path / "model.pt", top, {"0": b"\0" * 4}), "containing itself (me)")


def test_deep_and_exponentially_shared_module_trees(tmp_path):
    deep = pickled_record("__torch__.Leaf", {"w": _tensor()})
    for _ in range(MAX_SCRIPT_DEPTH + 1):
        deep = pickled_record("__torch__.Node", {"c": deep})
    _assert_read_error(write_script_archive(tmp_path / "deep.pt", deep, {"0": b"\0" * 4}), "nested more than")

    # Each level holds its child twice (one pickled object, memoised): 2**40 paths from a few hundred bytes.
    shared = pickled_record("__torch__.Leaf", {"w": _tensor()}) + b"q\x00"
    for level in range(1, 41):
        shared = pickled_record("__torch__.Node", {"a": shared, "b": b"h" + bytes([level - 1])})
        shared += b"q" + bytes([level])
    _assert_read_error(write_script_archive(tmp_path / "wide.pt", shared, {"0": b"\0" * 4}), "more than 100000")


def test_truncated_and_corrupted_real_archive(tmp_path):
    raw = (DATA / "tower_traced_fp16.pt").read_bytes()
    assert_damage_is_read_or_refused(raw, tmp_path / "damaged.pt", trials=30, seed=1)


def test_pre_1_4_torchscript_format(tmp_path):
    path = tmp_path / "old.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("old/model.json", b"{}")
        archive.writestr("old/tensors/0", b"\0" * 4)
    _assert_read_error(path, "torch 1.3 or older")

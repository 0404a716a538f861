"""NVIDIA network pickles read as records, against the fixture manifests; hostile pickles refused unrun."""

import hashlib
import json
import pickle
import struct
import sys
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy

from cdiff_jax.weights.network_pickle import (
    DamagedPickleError,
    MalformedPersistentObjectError,
    PersistentModule,
    ReferencedObject,
    StorageSizeError,
    read_network_pickle,
)
from cdiff_jax.weights.state_dict_io import CheckpointReadError, UnsafeCheckpointError

FOLDERS = ["stylegan2", "eg3d"]
SNAPSHOT = "network-snapshot-000000.pkl"
_SNAPSHOTS = {}


def _snapshot(root, folder):
    key = (str(root), folder)
    if key not in _SNAPSHOTS:
        _SNAPSHOTS[key] = read_network_pickle(root / folder / SNAPSHOT)
    return _SNAPSHOTS[key]


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("network", ["G_ema", "D"])
def test_state_dict_matches_the_manifest(fixtures_root, folder, network):
    manifest = json.loads((fixtures_root / folder / "manifest.json").read_text())[network]
    state = _snapshot(fixtures_root, folder)[network].state_dict()
    assert list(state) == [key for key, _, _ in manifest]  # torch's state_dict order
    for key, shape, dtype in manifest:
        assert (list(state[key].shape), state[key].dtype.name) == (shape, dtype), key


@pytest.mark.parametrize("folder", FOLDERS)
def test_g_ema_values_are_bit_equal_to_the_safetensors(fixtures_root, folder):
    expected = safetensors.numpy.load_file(fixtures_root / folder / "g_ema.safetensors")
    state = _snapshot(fixtures_root, folder)["G_ema"].state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert state[key].tobytes() == value.tobytes() and state[key].shape == value.shape, key


@pytest.mark.parametrize("folder", FOLDERS)
def test_g_is_not_g_ema(fixtures_root, folder):
    snapshot = _snapshot(fixtures_root, folder)
    g, g_ema = snapshot["G"].state_dict(), snapshot["G_ema"].state_dict()
    assert list(g) == list(g_ema)
    assert any(not np.array_equal(g[k], g_ema[k]) for k in g)


@pytest.mark.parametrize("folder", FOLDERS)
def test_constructor_arguments_and_records(fixtures_root, folder):
    config = json.loads((fixtures_root / folder / "config.json").read_text())
    snapshot = _snapshot(fixtures_root, folder)
    for name, network in (("G", "G"), ("G_ema", "G"), ("D", "D")):
        record = snapshot[name]
        assert isinstance(record, PersistentModule)
        assert config[network]["class_name"].rsplit(".", 1)[-1] == record.class_name
        assert record.init_kwargs == config[network]["init_kwargs"] and type(record.init_kwargs) is dict
        assert record.init_args == tuple(config[network]["init_args"])
        assert len(record.source_md5) == 32
    g = snapshot["G_ema"]
    assert g.attributes["img_resolution"] == config["G"]["init_kwargs"]["img_resolution"]
    assert set(snapshot) >= {"G", "D", "G_ema"}
    for name, value in config.get("non_init_state", {}).items():  # EG3D: attributes set after construction
        if not isinstance(value, str):
            assert g.attributes[name] == value
    children = [m for m in g.submodules.values() if m is not None]
    assert all(isinstance(m, (PersistentModule, ReferencedObject)) for m in children)


def test_referenced_classes_are_inert_records(fixtures_root):
    """EG3D's decoder is pickled by reference: a record of its state whose tensors join the state_dict."""
    g = _snapshot(fixtures_root, "eg3d")["G_ema"]
    referenced = {name: m for name, m in g.submodules.items() if isinstance(m, ReferencedObject)}
    assert referenced, "EG3D pickles some modules by reference"
    state = g.state_dict()
    for name, record in referenced.items():
        assert type(record).__mro__[1] is ReferencedObject and "." in record.qualified_name
        assert set(record.state_dict()) == {k[len(name) + 1 :] for k in state if k.startswith(name + ".")}


def test_reading_imports_and_compiles_nothing(fixtures_root, monkeypatch):
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("the reader compiled or executed code")

    for name in ("exec", "eval", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    for folder in FOLDERS:
        read_network_pickle(fixtures_root / folder / SNAPSHOT)
    assert not {"torch", "torch_utils", "dnnlib", "training"} & {m.split(".")[0] for m in sys.modules}


# --- Crafted pickles (opcodes written out, no torch): refused or inert, nothing run or written.


def _body(value) -> bytes:
    """Plain data (dicts, strings, numbers) as pickle opcodes, without the PROTO header and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _call(module: str, name: str, *args: bytes) -> bytes:
    return _global(module, name) + b"(" + b"".join(args) + b"tR"


def _bytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def _pickle(body: bytes) -> bytes:
    return b"\x80\x03" + body + b"."


def _snapshot_with(body: bytes) -> bytes:
    """{'G_ema': <body>} as a snapshot pickle."""
    return _pickle(b"}" + _body("G_ema") + body + b"s")


def _legacy_storage(values: np.ndarray, declared: int | None = None, storage_global=("torch", "FloatStorage")):
    """What torch.storage._load_from_bytes receives: a legacy torch.save of one storage."""
    declared = values.size if declared is None else declared
    header = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    header += pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, protocol=2)
    record = b"\x80\x02(" + _body("storage") + _global(*storage_global) + _body("k") + _body("cpu")
    record += _body(declared) + b"NtQ."
    return header + record + pickle.dumps(["k"], protocol=2) + struct.pack("<q", declared) + values.tobytes()


def _parameter(legacy: bytes, size: int) -> bytes:
    storage = _call("torch.storage", "_load_from_bytes", _bytes(legacy))
    hooks = _call("collections", "OrderedDict")
    tensor = _call("torch._utils", "_rebuild_tensor_v2", storage, _body(0), _body((size,)), _body((1,)), b"\x89", hooks)
    return _call("torch._utils", "_rebuild_parameter", tensor, b"\x89", hooks)


def _persistent(meta_without_state: dict, state_body: bytes) -> bytes:
    """_reconstruct_persistent_obj(meta), with meta's `state` given as opcodes."""
    items = b"".join(_body(k) + _body(v) for k, v in meta_without_state.items())
    return _call(
        "torch_utils.persistence", "_reconstruct_persistent_obj", b"}(" + items + _body("state") + state_body + b"u"
    )


def _write(tmp_path, data: bytes):
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(data)
    return path


def _refused(path, error=CheckpointReadError, *fragments):
    with pytest.raises(error) as info:
        read_network_pickle(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_crafted_persistent_object_is_read_without_running_its_source(tmp_path):
    marker = tmp_path / "module_src_ran"
    source = f"open({str(marker)!r}, 'w').close()\nclass Generator:\n    pass\n"
    values = np.arange(5, dtype=np.float32)
    params = _call("collections", "OrderedDict") + b"(" + _body("w") + _parameter(_legacy_storage(values), 5) + b"u"
    state = b"}(" + _body("_parameters") + params + _body("_init_kwargs") + _body({"z_dim": 4}) + _body("width")
    state += _body(7) + b"u"
    meta = {"type": "class", "version": 6, "module_src": source, "class_name": "Generator"}
    snapshot = read_network_pickle(_write(tmp_path, _snapshot_with(_persistent(meta, state))))
    g = snapshot["G_ema"]
    assert not marker.exists()
    assert (g.class_name, g.init_kwargs, g.attributes) == ("Generator", {"z_dim": 4}, {"width": 7})
    assert g.source_md5 == hashlib.md5(source.encode()).hexdigest()
    np.testing.assert_array_equal(g.state_dict()["w"], values)


def test_os_system_reducer_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, _snapshot_with(_call("os", "system", _body(f"touch {marker}"))))
    _refused(path, UnsafeCheckpointError, "os.system", "nothing from the file was imported or executed")
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("training.networks", "Generator"),
        ("torch_utils.persistence", "persistent_class"),
        ("subprocess", "Popen"),
    ],
)
def test_globals_outside_the_allow_list_are_refused(tmp_path, module, name):
    body = _call(module, name, _body("print(1)"))
    _refused(_write(tmp_path, _snapshot_with(body)), UnsafeCheckpointError, f"{module}.{name}")
    stack_global = _body(module) + _body(name) + b"\x93" + b"(" + _body("x") + b"tR"  # protocol 4 STACK_GLOBAL
    _refused(_write(tmp_path, b"\x80\x04" + stack_global + b"."), UnsafeCheckpointError, f"{module}.{name}")


def test_globals_inside_an_embedded_storage_are_refused(tmp_path):
    legacy = _legacy_storage(np.zeros(2, np.float32), storage_global=("os", "system"))
    _refused(_write(tmp_path, _snapshot_with(_parameter(legacy, 2))), UnsafeCheckpointError, "os.system")


@pytest.mark.parametrize(
    "meta, fragment",
    [
        ({"type": "function", "version": 6, "module_src": "", "class_name": "G"}, "type 'function'"),
        ({"type": "class", "version": 6, "class_name": "G"}, "'module_src'"),
        ({"type": "class", "version": 6, "module_src": "", "class_name": "os.system"}, "no Python identifier"),
    ],
)
def test_malformed_persistent_meta(tmp_path, meta, fragment):
    path = _write(tmp_path, _snapshot_with(_persistent(meta, _body({}))))
    _refused(path, MalformedPersistentObjectError, fragment)


def test_malformed_persistent_state(tmp_path):
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "G"}
    path = _write(tmp_path, _snapshot_with(_persistent(meta, _body({"_parameters": {"w": "not a tensor"}}))))
    _refused(path, MalformedPersistentObjectError, "_parameters")


def test_truncated_fixture_pickle(fixtures_root, tmp_path):
    raw = (fixtures_root / FOLDERS[0] / SNAPSHOT).read_bytes()
    for cut in (len(raw) // 2, len(raw) - 1):
        _refused(_write(tmp_path, raw[:cut]), DamagedPickleError, "truncated")


def test_byte_string_declaring_more_than_the_file_holds(tmp_path):
    """A BINBYTES8 claiming 1 TiB in a tiny file: refused from the declared length, nothing allocated for it."""
    body = b"\x8e" + struct.pack("<Q", 2**40) + b"\0" * 64
    tracemalloc.start()
    try:
        _refused(_write(tmp_path, b"\x80\x04" + body), DamagedPickleError, "truncated")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24, f"peak allocation {peak} bytes"


def test_storage_claiming_more_elements_than_present(tmp_path):
    values = np.arange(4, dtype=np.float32)
    good = read_network_pickle(_write(tmp_path, _snapshot_with(_parameter(_legacy_storage(values), 4))))
    np.testing.assert_array_equal(good["G_ema"], values)  # the crafted format itself is sound
    legacy = _legacy_storage(values, declared=2**30)
    message = _refused(_write(tmp_path, _snapshot_with(_parameter(legacy, 4))), StorageSizeError, str(2**30))
    assert "16 bytes" in message


def test_not_a_file_empty_and_not_a_snapshot(tmp_path):
    _refused(tmp_path / "missing.pkl", CheckpointReadError, "no such file")
    _refused(_write(tmp_path, b""), DamagedPickleError, "empty")
    _refused(_write(tmp_path, _pickle(_body([1, 2]))), DamagedPickleError, "not a snapshot dict")

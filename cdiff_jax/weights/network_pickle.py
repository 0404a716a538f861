"""Read NVIDIA's network pickles (StyleGAN2-ADA, EG3D ``network-snapshot-*.pkl``) without running them.

Loaded the official way, such a pickle exec()s the Python source embedded in it (``module_src``) and
imports NVIDIA's packages. Here nothing of the file is imported, compiled or executed: every global it
references must be on an allow-list and resolves to a stand-in of ours. Each persistent object becomes
a ``PersistentModule`` record (class name, constructor arguments, attributes, sub-modules, tensors as
numpy arrays); the few plain classes EG3D pickles by reference become inert ``ReferencedObject`` records
of their pickled state. Tensors are rebuilt by the same bounds-checked code as ``.ckpt`` files.
"""

from __future__ import annotations

import collections
import hashlib
import io
import mmap
import pathlib
import pickle
import pickletools
import re

import numpy as np

from cdiff_jax.weights.state_dict_io import (
    TENSOR_GLOBALS,
    CheckpointReadError,
    StorageType,
    UnsafeCheckpointError,
)


class DamagedPickleError(CheckpointReadError):
    """The file is truncated or its bytes do not decode as a network pickle."""


class StorageSizeError(DamagedPickleError):
    """A tensor storage declares more elements than the file holds for it."""


class MalformedPersistentObjectError(CheckpointReadError):
    """A ``_reconstruct_persistent_obj`` call whose ``meta`` is not what NVIDIA's persistence writes."""


class ModuleRecord:
    """A torch module as pickled: tensors, sub-modules and plain attributes, never the class itself."""

    class_name: str
    parameters: dict[str, np.ndarray | None]
    buffers: dict[str, np.ndarray | None]
    non_persistent_buffers: frozenset[str]
    submodules: dict[str, ModuleRecord | None]
    attributes: dict
    _complete = False  # set once the pickle gave the record its state

    def _set_module_state(self, state: dict, problem) -> None:
        """Split an ``nn.Module.__dict__`` into its parts; `problem(text)` builds the error to raise."""
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise problem(f"its state is a {type(state).__name__}, not an attribute dict")
        parts = {}
        for name, kind in (("_parameters", np.ndarray), ("_buffers", np.ndarray), ("_modules", ModuleRecord)):
            entries = state.get(name, {})
            if not isinstance(entries, dict) or not all(
                isinstance(k, str) and (v is None or isinstance(v, kind)) for k, v in entries.items()
            ):
                raise problem(f"its {name} is not a dict of names to {kind.__name__}s")
            parts[name] = dict(entries)
        non_persistent = state.get("_non_persistent_buffers_set", set())
        if not isinstance(non_persistent, (set, frozenset)):
            raise problem("its _non_persistent_buffers_set is not a set")
        self.parameters, self.buffers, self.submodules = parts["_parameters"], parts["_buffers"], parts["_modules"]
        self.non_persistent_buffers = frozenset(non_persistent)
        self.attributes = {k: _plain(v) for k, v in state.items() if not _is_torch_internal(k)}

    def state_dict(self) -> dict[str, np.ndarray]:
        """torch's ``state_dict()``: own parameters, then persistent buffers, then each sub-module's, dotted."""
        out = {}
        self._collect(out, "")
        return out

    def _collect(self, out: dict, prefix: str) -> None:
        for name, value in self.parameters.items():
            if value is not None:
                out[prefix + name] = value
        for name, value in self.buffers.items():
            if value is not None and name not in self.non_persistent_buffers:
                out[prefix + name] = value
        for name, module in self.submodules.items():
            if module is not None:
                module._collect(out, f"{prefix}{name}.")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.class_name}: {len(self.state_dict())} tensors>"


class PersistentModule(ModuleRecord):
    """An object of an ``@persistence.persistent_class`` class: what ``_reconstruct_persistent_obj`` got.

    ``source_md5`` identifies the embedded source (``module_src``), which is kept as text only to hash it.
    """

    init_args: tuple
    init_kwargs: dict
    source_md5: str


class ReferencedObject(ModuleRecord):
    """An allow-listed plain class (EG3D's decoder, renderer): its pickled state, never an instance of it."""

    qualified_name: str

    def __init__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"{self.qualified_name} is called; only its pickled state is expected")

    def __setstate__(self, state):
        self._set_module_state(state, lambda text: pickle.UnpicklingError(f"{self.qualified_name}: {text}"))
        self._complete = True


def _referenced(module: str, name: str) -> type[ReferencedObject]:
    return type(name, (ReferencedObject,), {"class_name": name, "qualified_name": f"{module}.{name}"})


# The classes EG3D pickles by reference (not persistent); the README of the fixtures lists them.
REFERENCED_CLASSES = {
    (module, name): _referenced(module, name)
    for module, name in (
        ("torch.nn.modules.activation", "Softplus"),
        ("torch.nn.modules.container", "Sequential"),
        ("training.triplane", "OSGDecoder"),
        ("training.volumetric_rendering.renderer", "ImportanceRenderer"),
        ("training.volumetric_rendering.ray_marcher", "MipRayMarcher2"),
        ("training.volumetric_rendering.ray_sampler", "RaySampler"),
    )
}

_TORCH_INTERNALS = {
    "training",
    "_parameters",
    "_buffers",
    "_non_persistent_buffers_set",
    "_modules",
    "_init_args",
    "_init_kwargs",
    "_is_full_backward_hook",
}
_HOOKS = re.compile(r"^_\w*hooks\w*$")


def _is_torch_internal(key: str) -> bool:
    return key in _TORCH_INTERNALS or bool(_HOOKS.match(key))


class _EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` while unpickling; ``_plain`` turns it into a dict."""

    __slots__ = ()


class _Dtype:
    """Stands in for ``numpy.dtype`` as pickled (name, then a BUILD with the byte order): numbers only."""

    def __init__(self, name, align=False, copy=True):
        if not (isinstance(name, str) and re.fullmatch(r"[biufc]\d{1,2}", name)):
            raise pickle.UnpicklingError(f"numpy dtype {name!r} is not a plain number type")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "=")):
            raise pickle.UnpicklingError(f"numpy dtype state {state!r} is not understood")
        self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data):
    """Stands in for ``numpy.core.multiarray.scalar``: one number from its bytes, as a Python number."""
    if not (isinstance(dtype, _Dtype) and isinstance(data, bytes) and len(data) == dtype.dtype.itemsize):
        raise pickle.UnpicklingError("numpy scalar is not a plain number of its dtype's size")
    return np.frombuffer(data, dtype.dtype, count=1)[0].item()


def _plain(value):
    """EasyDicts (also nested in lists and tuples) as plain dicts."""
    if isinstance(value, dict) and not isinstance(value, ModuleRecord):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


# torch's legacy (non-zip) serialisation, as ``torch.storage._load_from_bytes`` receives it.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _LegacyStorage:
    """The storage a legacy file's object pickle names; its bytes follow the pickle."""

    def __init__(self, dtype: np.dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class _LegacyUnpickler(pickle.Unpickler):
    """One of the pickles of a legacy file: plain data, storage types and storage persistent ids only."""

    def __init__(self, stream, refuse):
        super().__init__(stream, encoding="utf-8")
        self._refuse = refuse

    def find_class(self, module, name):
        storage_type = TENSOR_GLOBALS.get((module, name))
        if not isinstance(storage_type, StorageType):
            raise self._refuse(module, name)
        return storage_type

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in an embedded storage")
        _, storage_type, key, _location, numel, view = pid
        if view is not None or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"unsupported storage record {pid[2:]!r} in an embedded storage")
        return _LegacyStorage(storage_type.dtype, key, numel)


class _NetworkUnpickler(pickle.Unpickler):
    """The snapshot pickle: allow-listed globals resolve to our stand-ins, every other one is refused."""

    def __init__(self, stream, path: pathlib.Path):
        super().__init__(stream, encoding="utf-8")
        self._path = path
        self._globals = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("dnnlib.util", "EasyDict"): _EasyDict,
            ("numpy", "dtype"): _Dtype,
            ("numpy.core.multiarray", "scalar"): _numpy_scalar,
            ("numpy._core.multiarray", "scalar"): _numpy_scalar,
            ("torch._utils", "_rebuild_tensor_v2"): TENSOR_GLOBALS[("torch._utils", "_rebuild_tensor_v2")],
            ("torch._utils", "_rebuild_parameter"): TENSOR_GLOBALS[("torch._utils", "_rebuild_parameter")],
            ("torch.storage", "_load_from_bytes"): self._load_from_bytes,
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): self._reconstruct_persistent_obj,
            **REFERENCED_CLASSES,
        }

    def _refused(self, module, name) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(
            f"{self._path}: refused: the pickle references {module}.{name}, which is not on the allow-list of "
            "StyleGAN2/EG3D network pickles; nothing from the file was imported or executed "
            "(export G_ema.state_dict() to .safetensors from a trusted setup instead)"
        )

    def find_class(self, module, name):
        # Never defer to pickle's own find_class: that would import ``module``.
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise self._refused(module, name) from None

    def _load_from_bytes(self, data):
        """``torch.storage._load_from_bytes``: a storage as one legacy ``torch.save`` file of it."""
        if not isinstance(data, bytes):
            raise pickle.UnpicklingError("an embedded storage is not a bytes object")
        stream = io.BytesIO(data)
        header = [_LegacyUnpickler(stream, self._refused).load() for _ in range(3)]
        magic, protocol, sys_info = header
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(sys_info, dict):
            raise pickle.UnpicklingError("an embedded storage is not in torch's legacy format")
        if sys_info.get("little_endian") is not True:
            raise DamagedPickleError(
                f"{self._path}: an embedded storage was written on a big-endian machine, which is not supported; "
                "re-save the network on a little-endian one"
            )
        storage = _LegacyUnpickler(stream, self._refused).load()
        keys = _LegacyUnpickler(stream, self._refused).load()
        if not isinstance(storage, _LegacyStorage) or keys != [storage.key]:
            raise pickle.UnpicklingError("an embedded storage holds something other than one storage")
        count_bytes = stream.read(8)
        if len(count_bytes) != 8:
            raise pickle.UnpicklingError("an embedded storage ends before its element count")
        count = int.from_bytes(count_bytes, "little")
        available = len(data) - stream.tell()
        if count != storage.numel or count * storage.dtype.itemsize > available:
            raise StorageSizeError(
                f"{self._path}: an embedded storage declares {count} {storage.dtype} elements (its record says "
                f"{storage.numel}) but holds {available} bytes for them; the file is damaged, re-download it"
            )
        return np.frombuffer(data, storage.dtype, count=count, offset=stream.tell())

    def _reconstruct_persistent_obj(self, meta):
        """``torch_utils.persistence._reconstruct_persistent_obj``: a record; ``module_src`` is only hashed."""

        def malformed(text):
            return MalformedPersistentObjectError(
                f"{self._path}: a persistent object's meta {text}; the file is damaged or not an NVIDIA "
                "network pickle, re-download it"
            )

        if not isinstance(meta, dict):
            raise malformed(f"is a {type(meta).__name__}, not a dict")
        if meta.get("type") != "class":
            raise malformed(f"has type {meta.get('type')!r}; only 'class' is written for networks")
        for key, kind in (("version", int), ("module_src", str), ("class_name", str), ("state", dict)):
            if not isinstance(meta.get(key), kind):
                raise malformed(f"has no {kind.__name__} {key!r}")
        if not meta["class_name"].isidentifier():
            raise malformed(f"names the class {meta['class_name']!r}, which is no Python identifier")
        state = meta["state"]
        init_args, init_kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
        if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
            raise malformed("has constructor arguments that are not a tuple and a dict")
        record = PersistentModule.__new__(PersistentModule)
        record.class_name = meta["class_name"]
        record.init_args, record.init_kwargs = tuple(_plain(list(init_args))), _plain(init_kwargs)
        record.source_md5 = hashlib.md5(meta["module_src"].encode()).hexdigest()
        record._set_module_state(state, lambda text: malformed(f"for {record.class_name} is unusable: {text}"))
        record._complete = True
        return record


def _check_opcodes(stream, path: pathlib.Path) -> None:
    """Walk the opcodes (no object is built) so a truncated file or an oversized length fails before loading.

    pickle's own loader allocates a bytes object of each declared length before reading it; this walk
    reads through a bounded stream, so every length is checked against the bytes really there first.
    """
    try:
        for _ in pickletools.genops(stream):  # stops after STOP, raises ValueError on a short or unknown opcode
            pass
    except ValueError as exc:
        raise DamagedPickleError(f"{path}: the pickle is truncated or damaged ({exc}); re-download it") from None


def _check_complete(value, path: pathlib.Path, seen: set) -> None:
    """Every record got its state (a referenced class called without one is a damaged file)."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, ModuleRecord):
        if not value._complete:
            raise DamagedPickleError(f"{path}: a {value.class_name} object has no pickled state; re-download the file")
        children = [*value.submodules.values(), *value.attributes.values()]
    elif isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        return
    for child in children:
        _check_complete(child, path, seen)


def read_network_pickle(path) -> dict:
    """The top-level dict of an NVIDIA snapshot (``'G'``, ``'D'``, ``'G_ema'``, ...), networks as records.

    Raises ``CheckpointReadError`` subclasses with one-line messages naming the file and the problem.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: no such file; check the network pickle path")
    if path.stat().st_size == 0:
        raise DamagedPickleError(f"{path}: the file is empty; re-download it")
    try:
        # Mapped, not read: a snapshot can be hundreds of MB, and the tensors are copied out of it anyway.
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _check_opcodes(data, path)
            data.seek(0)
            top = _NetworkUnpickler(data, path).load()
    except CheckpointReadError:
        raise
    except Exception as exc:  # Untrusted bytes: any other failure while decoding them means a damaged file.
        raise DamagedPickleError(
            f"{path}: damaged network pickle ({type(exc).__name__}: {exc}); re-download it".replace("\n", " ")
        ) from None
    if not isinstance(top, dict):
        raise DamagedPickleError(
            f"{path}: the pickle holds a {type(top).__name__}, not a snapshot dict ('G', 'D', 'G_ema', ...)"
        )
    _check_complete(top, path, set())
    return _plain(top)

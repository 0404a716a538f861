"""Read PyTorch checkpoints (``torch.save`` zip format), TorchScript archives (``torch.jit.save``) and
``.safetensors`` files without torch.

The released Collaborative Diffusion weights are Lightning ``.ckpt`` files. Loading them with ``pickle``
would let the file run arbitrary code, and loading them with torch would make torch a dependency. Instead,
``.ckpt`` files are unpickled by a restricted unpickler that only knows how to rebuild tensors as numpy
arrays: every other global in the pickle is refused before it is imported, let alone called.

A TorchScript archive (OpenAI's released CLIP ``.pt`` files) is the same zip layout: ``<top>/data.pkl`` pickles
the module tree, each module an object of a ``__torch__.*`` class whose state is the dict of its attributes,
and tensors are the same ``_rebuild_tensor_v2`` calls on ``<top>/data/<key>`` storages. Its ``code/`` folder
(the classes' TorchScript source, compressed) and ``constants.pkl`` (tensor constants of that code, stored in
``constants/``, never part of a state dict) are not read. Every ``__torch__.*`` class maps to one inert record
(``ScriptObject``) that keeps its pickled attributes, and the state dict is the walk of those records.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pathlib
import pickle
import zipfile

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"

# torch's legacy (pre-1.6, non-zip) format starts with this number, pickled as a protocol-2 LONG1.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class CheckpointReadError(ValueError):
    """A checkpoint could not be read; the message names the file and what to do about it."""


class UnsafeCheckpointError(CheckpointReadError):
    """The checkpoint's pickle references a global other than the tensor-rebuild functions (and, in a TorchScript
    archive, its module classes and typed containers)."""


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """A flat state dict as numpy arrays, plus the checkpoint's other top-level plain-data entries.

    ``extras`` keeps scalars (``global_step``, ``epoch``, version strings) as they are and replaces
    everything else (optimizer states, tensors, nested dicts) by a short description string.
    """

    tensors: dict[str, np.ndarray]
    extras: dict
    source_format: str


@dataclasses.dataclass(frozen=True)
class StorageType:
    """Stands in for ``torch.<X>Storage``: the unpickler only needs its element dtype."""

    name: str
    dtype: np.dtype


def rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stand-in for ``torch._utils._rebuild_tensor[_v2]``: a contiguous copy of the strided view.

    The trailing ``requires_grad, backward_hooks, metadata`` arguments of the v2 form carry nothing a
    numpy array can hold. Offset, sizes and strides (in elements) come from an untrusted file, so they
    are checked against the storage before ``as_strided`` could read memory outside it.
    """
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage record")
    size, stride = tuple(size), tuple(stride)
    values = (storage_offset, *size, *stride)
    if len(size) != len(stride) or not all(type(v) is int and v >= 0 for v in values):
        raise pickle.UnpicklingError(f"invalid tensor layout: offset {storage_offset}, size {size}, stride {stride}")
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise pickle.UnpicklingError(
                f"tensor layout (offset {storage_offset}, size {size}, stride {stride}) "
                f"reaches past its storage of {storage.size} elements"
            )
    base = storage[storage_offset:]
    view = np.lib.stride_tricks.as_strided(base, size, [s * storage.itemsize for s in stride], writeable=False)
    return view.copy()


def rebuild_parameter(data, requires_grad, backward_hooks):
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its data here."""
    return data


TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class ScriptObject:
    """Inert stand-in for every TorchScript class (``__torch__.*``) in a TorchScript archive's ``data.pkl``.

    torch pickles each module as ``NEWOBJ`` of its class (no arguments) followed by ``BUILD`` with the dict of its
    attributes (parameters, buffers, submodules, ``training``, ints, strings...). This record only keeps that
    state; it has no behaviour, so nothing from the file is ever run.
    """

    __slots__ = ("state",)

    def __new__(cls, *args):
        if args:
            raise pickle.UnpicklingError("a TorchScript object is built without arguments")
        obj = super().__new__(cls)
        obj.state = None
        return obj

    def __setstate__(self, state):
        self.state = state

    @property
    def attributes(self) -> dict:
        return self.state if isinstance(self.state, dict) else {}


def _typed_list(values):
    """Stand-in for ``torch.jit._pickle.build_{int,double,bool,tensor}list``: the element type tags a plain list."""
    if not isinstance(values, list):
        raise pickle.UnpicklingError(f"typed list built from a {type(values).__name__}")
    return values


def _restore_type_tag(value, type_string):
    """Stand-in for ``torch.jit._pickle.restore_type_tag``: the container's TorchScript type is dropped."""
    return value


def _device(kind, index=None):
    """Stand-in for ``torch.device`` (a module attribute of that type): kept as its string."""
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise pickle.UnpicklingError(f"invalid device ({kind!r}, {index!r})")
    return kind if index is None else f"{kind}:{index}"


# Only a TorchScript archive's data.pkl may use these (torch's own unpickler for it knows no more than this).
SCRIPT_GLOBALS = {
    **{("torch.jit._pickle", f"build_{kind}list"): _typed_list for kind in ("int", "double", "bool", "tensor")},
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    ("torch", "device"): _device,
}
MAX_SCRIPT_DEPTH = 100  # nesting of TorchScript modules (CLIP's is 6)
MAX_SCRIPT_RECORDS = 100_000  # module records visited by the walk (bounds a shared-submodule blow-up)
MAX_SCRIPT_ENTRIES = 1_000_000


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip archive, resolving storages from the archive's records."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: pathlib.Path, torchscript: bool = False):
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")), encoding="utf-8")
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._torchscript = torchscript
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        self._big_endian = byteorder == "big"
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        # Never defer to pickle's own find_class: that would import ``module``.
        if (module, name) in TENSOR_GLOBALS:
            return TENSOR_GLOBALS[(module, name)]
        if self._torchscript:
            if module == "__torch__" or module.startswith("__torch__."):
                return ScriptObject
            if (module, name) in SCRIPT_GLOBALS:
                return SCRIPT_GLOBALS[(module, name)]
            fix = "torch.save(torch.jit.load(path).state_dict(), new_path)"
        else:
            fix = "torch.save({'state_dict': sd}, path) or safetensors"
        raise UnsafeCheckpointError(
            f"{self._path}: the file was not loaded because a checkpoint must not run code, and its pickle "
            f"references {module}.{name}, which is not a tensor or plain container; if you trust the file, "
            f"re-save just its tensors ({fix}) and convert that"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            record = f"{self._prefix}data/{key}"
            try:
                info = self._archive.getinfo(record)
            except KeyError:
                raise CheckpointReadError(
                    f"{self._path}: storage record {record} is missing from the archive; the file is truncated "
                    "or corrupt, re-download or re-save it"
                ) from None
            dtype = storage_type.dtype
            # Checked against the record's size (itself checked against the file's) before reading it.
            if type(numel) is not int or not 0 <= numel * dtype.itemsize <= info.file_size:
                raise CheckpointReadError(
                    f"{self._path}: storage record {record} holds {info.file_size} bytes, too few for {numel} "
                    f"{dtype} elements; the file is corrupt, re-download or re-save it"
                )
            storage = np.frombuffer(self._archive.read(record), dtype=dtype, count=numel)
            self._storages[key] = storage.byteswap() if self._big_endian else storage
        return self._storages[key]


def _check_member_sizes(archive: zipfile.ZipFile, path: pathlib.Path, unread: str | None = None) -> None:
    """Every record's declared size must fit in the file, so no read can be asked for more than it holds.

    torch.save stores records uncompressed; a compressed record could declare any size, so it is refused. The one
    exception is the records under ``unread`` (a TorchScript archive's ``code/`` folder, which torch.jit.save
    compresses), which are never read.
    """
    file_size = path.stat().st_size
    for info in archive.infolist():
        if unread is not None and info.filename.startswith(unread):
            if info.header_offset + info.compress_size > file_size:
                raise CheckpointReadError(
                    f"{path}: record {info.filename} ends past the end of the file; the file is truncated or "
                    "corrupt, re-download or re-save it"
                )
            continue
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointReadError(
                f"{path}: record {info.filename} is compressed, which torch.save never does; "
                "re-save the checkpoint with torch.save"
            )
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > file_size:
            raise CheckpointReadError(
                f"{path}: record {info.filename} declares {info.file_size} bytes, more than the file of "
                f"{file_size} bytes can hold; the file is truncated or corrupt, re-download or re-save it"
            )


def _is_torchscript(names: set[str], prefix: str) -> bool:
    """torch.jit.save writes ``constants.pkl`` and a ``code/`` folder beside ``data.pkl``; torch.save neither."""
    return prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names)


def read_torch_object(path: pathlib.Path):
    """Unpickle a ``torch.save`` zip archive through the restricted unpickler; returns the pickled top-level
    object (tensors as numpy arrays), for files whose layout is not one flat state dict (GAN checkpoints).

    For a TorchScript archive (``torch.jit.save``) that object is the top module's ``ScriptObject`` record."""
    return _read_torch_archive(path)[0]


def _read_torch_archive(path: pathlib.Path):
    """``read_torch_object``'s object, and whether the archive is a TorchScript one."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not head:
        raise CheckpointReadError(f"{path}: the file is empty; re-download or re-save it")
    if not zipfile.is_zipfile(path):
        if head == _LEGACY_MAGIC:
            raise CheckpointReadError(
                f"{path}: this is torch's legacy (non-zip) checkpoint format, which is not supported; "
                "load it in PyTorch and re-save it with torch.save (zip format, the default since torch 1.6)"
            )
        raise CheckpointReadError(
            f"{path}: not a zip archive, so not a checkpoint written by torch.save; "
            "the file is truncated or corrupt, re-download or re-save it"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            pickles = sorted(n for n in names if n.count("/") == 1 and n.endswith("/data.pkl"))
            if not pickles:
                _check_member_sizes(archive, path)
                if any(n.count("/") == 1 and n.endswith("/model.json") for n in names):
                    raise CheckpointReadError(
                        f"{path}: TorchScript archive of torch 1.3 or older (model.json), which is not supported; "
                        "load it with torch.jit.load and save torch.jit.load(path).state_dict() with torch.save"
                    )
                raise CheckpointReadError(
                    f"{path}: zip archive without a <name>/data.pkl record, so not a torch checkpoint; "
                    "pass a file written by torch.save or torch.jit.save, or a .safetensors file"
                )
            prefix = pickles[0][: -len("data.pkl")]
            torchscript = _is_torchscript(names, prefix)
            _check_member_sizes(archive, path, unread=prefix + "code/" if torchscript else None)
            return _RestrictedUnpickler(archive, prefix, path, torchscript).load(), torchscript
    except CheckpointReadError:
        raise
    except Exception as exc:  # Untrusted bytes: any failure while decoding them means the file is damaged.
        raise CheckpointReadError(
            f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc}); re-download or re-save it"
        ) from exc


def _summarise(value):
    """Scalars as they are; anything bigger as a one-line description, so extras stay small."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return f"<tensor {value.dtype} {list(value.shape)}>"
    if isinstance(value, (dict, list, tuple)):
        return f"<{type(value).__name__} with {len(value)} entries>"
    return f"<{type(value).__name__}>"


def _split_state_dict(path: pathlib.Path, top) -> tuple[dict[str, np.ndarray], dict]:
    """Find the state dict (Lightning's ``state_dict`` entry, or the top level itself) and the extras."""
    if not isinstance(top, dict):
        raise CheckpointReadError(
            f"{path}: the checkpoint holds a {type(top).__name__}, not a dict; expected a state dict or "
            "a Lightning checkpoint with a 'state_dict' entry"
        )
    if "state_dict" in top:
        state_dict = top["state_dict"]
        extras = {k: _summarise(v) for k, v in top.items() if k != "state_dict"}
    elif top and all(isinstance(v, np.ndarray) for v in top.values()):
        state_dict, extras = top, {}
    else:
        raise CheckpointReadError(
            f"{path}: no state dict found (top-level keys: {sorted(map(str, top))[:10]}); expected a "
            "'state_dict' entry or a flat dict of tensors"
        )
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointReadError(f"{path}: the 'state_dict' entry holds no tensors; nothing to convert")
    bad = [k for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise CheckpointReadError(
            f"{path}: state dict entry {bad[0]!r} is not a named tensor; re-save the checkpoint with tensors only"
        )
    return dict(state_dict), extras


def script_state_dict(path: pathlib.Path, top) -> dict[str, np.ndarray]:
    """``torch.jit.load(path).state_dict()`` from the module records of a TorchScript archive.

    Each record's tensor attributes are entries (under the dotted path of the record), in the pickle's attribute
    order, followed by its record attributes as submodules (``nn.Sequential``/``nn.ModuleList`` children are
    named "0", "1", ...); other attributes (``training``, ints, strings, None for absent biases, lists and dicts)
    are skipped. torch's archives list a module's parameters, then its buffers, then its submodules, which is
    therefore also torch's state_dict order. Which attribute is a parameter or buffer is declared only in the
    unread ``code/``: a scripted (not traced) module's plain tensor attributes, which torch leaves out of its
    state dict, come out as entries too, and a TorchScript class instance held by a module comes out as a
    submodule.
    """
    if not isinstance(top, ScriptObject):
        raise CheckpointReadError(
            f"{path}: TorchScript archive whose data.pkl holds a {type(top).__name__}, not a module; the file is "
            "corrupt, re-download or re-save it"
        )
    tensors: dict[str, np.ndarray] = {}
    records = 0

    def corrupt(what: str) -> CheckpointReadError:
        return CheckpointReadError(
            f"{path}: the TorchScript module tree {what}; the file is corrupt, re-download "
            "or re-save it (torch.save(torch.jit.load(path).state_dict(), new_path))"
        )

    def walk(record: ScriptObject, prefix: str, ancestors: tuple) -> None:
        nonlocal records
        records += 1
        if records > MAX_SCRIPT_RECORDS:
            raise corrupt(f"has more than {MAX_SCRIPT_RECORDS} modules")
        if len(ancestors) > MAX_SCRIPT_DEPTH:
            raise corrupt(f"is nested more than {MAX_SCRIPT_DEPTH} modules deep")
        attributes = record.attributes
        for name, value in attributes.items():
            if not isinstance(name, str):
                raise corrupt(f"has an attribute named by a {type(name).__name__}")
            if isinstance(value, np.ndarray):
                tensors[prefix + name] = value
        if len(tensors) > MAX_SCRIPT_ENTRIES:
            raise corrupt(f"has more than {MAX_SCRIPT_ENTRIES} tensors")
        for name, value in attributes.items():
            if isinstance(value, ScriptObject):
                if any(value is a for a in ancestors):
                    raise corrupt(f"has a module containing itself ({prefix + name})")
                walk(value, f"{prefix}{name}.", (*ancestors, value))

    walk(top, "", (top,))
    if not tensors:
        raise CheckpointReadError(f"{path}: the TorchScript module holds no tensors; nothing to convert")
    return tensors


def read_state_dict(path) -> LoadedCheckpoint:
    """Read the flat state dict of a ``.ckpt``/``.pt``/``.pth`` (torch zip or TorchScript archive) or
    ``.safetensors`` file. A TorchScript archive gives ``torch.jit.load(path).state_dict()`` (see
    ``script_state_dict``), with ``source_format`` "torchscript" and no extras.

    Raises ``CheckpointReadError`` (``UnsafeCheckpointError`` for pickles that reference anything but
    tensors) with a message that stands on its own, since a CLI prints only ``str(err)``.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointReadError(f"{path}: no such file; check the checkpoint path")
    if path.is_dir():
        raise CheckpointReadError(f"{path}: is a directory; pass the checkpoint file inside it")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        try:
            tensors = safetensors.numpy.load_file(path)
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise CheckpointReadError(
                f"{path}: corrupt or truncated safetensors file ({exc}); re-download or re-save it"
            ) from exc
        if not tensors:
            raise CheckpointReadError(f"{path}: the safetensors file holds no tensors; nothing to convert")
        return LoadedCheckpoint(tensors=dict(tensors), extras={}, source_format="safetensors")
    if suffix in TORCH_SUFFIXES:
        top, torchscript = _read_torch_archive(path)
        if torchscript:
            return LoadedCheckpoint(tensors=script_state_dict(path, top), extras={}, source_format="torchscript")
        tensors, extras = _split_state_dict(path, top)
        return LoadedCheckpoint(tensors=tensors, extras=extras, source_format="ckpt")
    raise CheckpointReadError(
        f"{path}: unsupported file extension {path.suffix!r}; supported are "
        f"{', '.join(TORCH_SUFFIXES)} (torch.save zip format or torch.jit.save archive) and {SAFETENSORS_SUFFIX}"
    )


def read_tensor(path) -> np.ndarray:
    """Read a ``torch.save(tensor)`` zip file whose top-level object is one tensor, e.g. an official mask ``.pt``.

    Same restricted unpickler and ``CheckpointReadError`` messages as ``read_state_dict``, so a dataset
    file can run no code either.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: no such file; check the tensor file path")
    top = read_torch_object(path)
    if not isinstance(top, np.ndarray):
        raise CheckpointReadError(
            f"{path}: the file holds a {type(top).__name__}, not a single tensor; save it with torch.save(tensor, path)"
        )
    return top

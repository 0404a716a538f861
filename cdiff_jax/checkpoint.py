"""Our checkpoint directories: `config.json` (the SystemConfig) beside orbax `params/`.

Everything is written into a temporary sibling directory and renamed into place, so a crash
or kill during a save never leaves a half-written checkpoint where a good one is expected. A remote destination
(gs://..., a training run's WORKDIR/system on a bucket) has no atomic rename (a rename there copies every object):
it is written in place, an existing checkpoint removed first (with overwrite), so a crash mid-save leaves an
incomplete directory there; orbax marks complete params/ with its commit_success.txt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import time
import uuid
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from cdiff_jax.config import EG3DConfig, StyleGAN2Config, SystemConfig
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.paths import creatable_parent, is_remote, output_path, quiet_orbax_failures
from cdiff_jax.system import LatentDiffusionSystem, abstract_system

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


class NotACheckpointError(ValueError):
    """The directory is not one of our checkpoints (of the kind asked for), or it is damaged."""


def read_config(directory: pathlib.Path, parse: Callable[[str], object]):
    """`parse` of DIRECTORY/config.json; a file that does not parse (bad JSON, a missing or unknown key, a
    value of the wrong type) is one line naming the file and the problem."""
    config_file = directory / CONFIG_FILE
    try:
        return parse(config_file.read_text())
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        problem = f"missing key {err.args[0]!r}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise NotACheckpointError(
            f"{config_file} is damaged or from another version ({problem}); convert or save the checkpoint again"
        ) from None


def read_params(directory: pathlib.Path, like):
    """`load_arrays` of DIRECTORY/params; a missing, truncated or mismatched file is one line naming the checkpoint
    (orbax and tensorstore raise many kinds of errors, each with pages of context)."""
    quiet_orbax_failures()
    try:
        return load_arrays(directory / PARAMS_DIR, like)
    except Exception as err:  # noqa: BLE001 -- every failure of a damaged directory becomes the same one line
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise NotACheckpointError(
            f"checkpoint {directory} is damaged: its {PARAMS_DIR}/ cannot be read as this "
            f"config's parameters ({first[:200]}); convert or save it again"
        ) from None


def save_system(
    directory: str | os.PathLike, system: LatentDiffusionSystem, *, overwrite: bool = False
) -> pathlib.Path:
    """Write the system's config and parameters atomically to `directory`."""
    return save_config_and_state(directory, system.cfg.to_json(), nnx.state(system, nnx.Param), overwrite)


def check_destination(directory: str | os.PathLike, overwrite: bool) -> pathlib.Path:
    """Where a checkpoint may be written: a new path, or with `overwrite` one of our checkpoint directories
    (config.json and params/, nothing else), never another folder or a file; checked before any work."""
    directory = output_path(directory)
    if directory.exists() or (not is_remote(directory) and directory.is_symlink()):
        if not overwrite:
            raise FileExistsError(f"{directory} exists; choose a new output path or replace it with --overwrite")
        if not directory.is_dir() or {p.name for p in directory.iterdir()} != {CONFIG_FILE, PARAMS_DIR}:
            raise FileExistsError(
                f"{directory} exists and is not a cdiff_jax checkpoint (config.json and params/ "
                "only); --overwrite replaces only those: choose a new output path"
            )
    try:
        creatable_parent(directory)
    except OSError as err:
        raise FileExistsError(
            f"cannot write {directory}: cannot create folders in {err.filename or directory.parent} "
            f"({err.strerror}); choose another output path"
        ) from None
    return directory


def save_config_and_state(directory, config_json: str, state: nnx.State, overwrite: bool) -> pathlib.Path:
    """config.json beside params/, written into a temporary directory and renamed into place.

    Across processes every one calls this (with the same arguments): the first writes config.json, all write
    their shards of the arrays (see `atomic_directory` and `save_tree`)."""
    directory = check_destination(directory, overwrite)
    with atomic_directory(directory) as tmp:
        if jax.process_index() == 0:
            tmp.mkdir(parents=True)  # a remote directory was emptied and is filled in place
            (tmp / CONFIG_FILE).write_text(config_json)
        save_tree(tmp / PARAMS_DIR, nnx.to_pure_dict(state))
    return directory


def save_arrays(directory: str | os.PathLike, tree) -> pathlib.Path:
    """Write a pytree of arrays (e.g. an edit's embeddings or fine-tuned expert) atomically as orbax."""
    directory = pathlib.Path(directory).absolute()
    with atomic_directory(directory) as tmp:
        save_tree(tmp, tree)
    return directory


STALE_SECONDS = 600  # a temporary sibling untouched this long was left by a killed process, not a running one


@contextlib.contextmanager
def atomic_directory(directory: pathlib.Path):
    """Yield a temporary sibling path to fill; it replaces `directory` only if the block succeeds.
    Temporaries of ours that a killed process left beside `directory` are removed first.

    A remote `directory` (gs://...) is yielded itself, emptied first, and filled in place: an object store renames
    by copying each object, which is neither atomic nor cheap (the module's docstring says what a crash leaves).

    With several processes (a shared file system), every process enters with the same `directory` and gets the
    same temporary path, the first process's choice; the block decides who writes what in it (orbax's saves take
    every process). The first process alone cleans up and renames, after all have finished the block."""
    lead = jax.process_index() == 0
    if is_remote(directory):
        if lead and directory.exists():
            directory.rmtree()
        _sync_processes("atomic_directory:start")
        yield directory
        _sync_processes("atomic_directory:written")
        return
    if lead:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_siblings(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{_shared_token()}")
    _sync_processes("atomic_directory:start")
    try:
        yield tmp
        _sync_processes("atomic_directory:written")
        if lead:
            _replace_dir(tmp, directory)
        _sync_processes("atomic_directory:replaced")
    finally:
        if lead:
            shutil.rmtree(tmp, ignore_errors=True)


def _shared_token() -> str:
    """Eight random hex digits, the same in every process (the first process's)."""
    if jax.process_count() == 1:
        return uuid.uuid4().hex[:8]
    from jax.experimental import multihost_utils

    token = multihost_utils.broadcast_one_to_all(np.asarray(uuid.uuid4().int % (1 << 31), np.int32))
    return f"{int(token):08x}"


def _sync_processes(name: str) -> None:
    """Wait until every process gets here (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# Largest data file orbax writes (default 2 GB): shipped checkpoints are tracked in git, which
# should hold no file over 20 MB.
DATA_FILE_BYTES = 8 << 20


def save_tree(path: pathlib.Path, tree) -> None:
    """Every process calls this with its part of the global arrays (orbax waits for all of them); an array held
    whole by each process (on its own devices, not a global one) is written once, from the first process's copy."""
    if jax.process_count() > 1:
        tree = jax.tree.map(_writable_across_processes, tree)
    # Zarr3 is what lets orbax split the data into files of a target size.
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_zarr3=True)) as checkpointer:
        checkpointer.save(path, args=ocp.args.PyTreeSave(tree, ocdbt_target_data_file_size=DATA_FILE_BYTES))
    # orbax's commit marker records the path it wrote to: a temporary one that is renamed next,
    # so the record would be wrong and would carry this machine's paths into shipped checkpoints.
    marker = path / "commit_success.txt"
    if jax.process_index() == 0 and marker.exists():
        marker.write_text("Checkpoint commit was successful.")


def _writable_across_processes(x):
    """`x` as orbax can write it when several processes save together: a process-local jax array (which orbax
    refuses) as numpy, written from the first process; a global array whose shards cannot be listed as a compiled
    copy. jax 0.12's device_put of a process-local array onto a replicated sharding, with one device per process,
    makes such arrays (`addressable_shards` raises ValueError; computations read them)."""
    if not isinstance(x, jax.Array):
        return x
    if x.is_fully_addressable:
        return np.asarray(x)
    try:
        x.addressable_shards  # noqa: B018 -- only whether it can be read
    except ValueError:
        return _copy(x)
    return x


_copy = jax.jit(lambda x: x)


def load_arrays(directory: str | os.PathLike, like):
    """Restore a pytree saved by orbax with the structure, shapes and dtypes of `like`, onto this
    process's first device whatever topology saved it."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(pathlib.Path(directory).absolute(), target)


def _remove_stale_siblings(directory: pathlib.Path) -> None:
    """Delete `.NAME.tmp-XXXXXXXX` and `.NAME.old-XXXXXXXX` beside `directory` (our names, see below) that have
    not been touched for STALE_SECONDS."""
    pattern = re.compile(rf"\.{re.escape(directory.name)}\.(tmp|old)-[0-9a-f]{{8}}")
    now = time.time()
    for sibling in directory.parent.iterdir():
        if pattern.fullmatch(sibling.name) and sibling.is_dir() and now - sibling.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(sibling, ignore_errors=True)


def _replace_dir(new: pathlib.Path, target: pathlib.Path) -> None:
    """Rename `new` to `target`; an existing target is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_config(directory: str | os.PathLike) -> SystemConfig:
    directory = pathlib.Path(directory)
    config_file = directory / CONFIG_FILE
    if not directory.is_dir() or not config_file.is_file() or not (directory / PARAMS_DIR).is_dir():
        raise NotACheckpointError(
            f"{directory} is not a cdiff_jax checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/); "
            "convert official weights with `python -m cdiff_jax.convert SRC DST`"
        )
    return read_config(directory, SystemConfig.from_json)


def load_system(directory: str | os.PathLike) -> LatentDiffusionSystem:
    """Rebuild the module tree from config.json and restore its parameters."""
    directory = pathlib.Path(directory).absolute()
    cfg = load_config(directory)
    system = abstract_system(cfg)
    params = read_params(directory, nnx.to_pure_dict(nnx.state(system, nnx.Param)))
    state = nnx.state(system, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(system, state)
    return system


# --- GAN generators (StyleGAN2, EG3D): config.json beside params/ (weights and buffers) -----------

EG3D_MARKER = '"superresolution"'  # a field only EG3DConfig has


def save_generator(
    directory: str | os.PathLike, generator: Generator | TriPlaneGenerator, *, overwrite: bool = False
) -> pathlib.Path:
    """Write a generator's config and whole state (w_avg and constant noise included) atomically."""
    return save_config_and_state(directory, generator.cfg.to_json(), nnx.state(generator), overwrite)


@dataclasses.dataclass(frozen=True)
class _GeneratorKind:
    network: type
    config: type
    description: str  # what a directory of the other kind is told it holds
    source: str  # what to convert


_GENERATOR_KINDS = {
    "StyleGAN2": _GeneratorKind(Generator, StyleGAN2Config, "a 2D StyleGAN2 generator", "a .pkl or .pt"),
    "EG3D": _GeneratorKind(
        TriPlaneGenerator, EG3DConfig, "an EG3D generator: 3D-aware, 14 W+ rows; use the 3D commands", "an EG3D .pkl"
    ),
}


def _generator_kind(directory: pathlib.Path) -> str | None:
    config_file = directory / CONFIG_FILE
    if not config_file.is_file() or not (directory / PARAMS_DIR).is_dir():
        return None
    text = config_file.read_text(errors="replace")
    if '"z_dim"' not in text:
        return None
    return "EG3D" if EG3D_MARKER in text else "StyleGAN2"


def _load_generator_of_kind(directory, kind: str):
    directory = pathlib.Path(directory).absolute()
    found, wanted = _generator_kind(directory), _GENERATOR_KINDS[kind]
    if found != kind:
        holds = f" (it holds {_GENERATOR_KINDS[found].description})" if found else ""
        article = "an" if kind[0] in "AEIOU" else "a"
        raise NotACheckpointError(
            f"{directory} is not {article} {kind} generator checkpoint{holds} (expected {CONFIG_FILE} of "
            f"{article} {wanted.config.__name__} and {PARAMS_DIR}/); convert {wanted.source} with "
            "`python -m cdiff_jax.convert SRC DST`"
        )
    cfg = read_config(directory, wanted.config.from_json)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: wanted.network(cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, read_params(directory, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def load_generator(directory: str | os.PathLike) -> Generator:
    """Rebuild a StyleGAN2 `Generator` from a directory written by `save_generator`."""
    return _load_generator_of_kind(directory, "StyleGAN2")


def load_eg3d_generator(directory: str | os.PathLike) -> TriPlaneGenerator:
    """Rebuild an EG3D `TriPlaneGenerator` from a directory written by `save_generator`."""
    return _load_generator_of_kind(directory, "EG3D")


def load_gan(directory: str | os.PathLike) -> Generator | TriPlaneGenerator:
    """A StyleGAN2 or EG3D generator checkpoint, whichever the directory holds (what DDGI drives)."""
    return _load_generator_of_kind(directory, _generator_kind(pathlib.Path(directory).absolute()) or "StyleGAN2")

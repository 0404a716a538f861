"""The evaluation fixtures' full state dicts, and the torch-free writer of `torch.save` archives for the tests.

The writer is the package's (`cdiff_jax.weights.torch_writer`), re-exported here for the tests that compose
archives torch would produce. The evaluation fixtures ship their large tensors as a numpy recipe (`recipe.py`
at the fixture root, EVAL_README.md); `fixture_state_dict` rebuilds the full dict and `write_state_dict`
writes it in the real file's format.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import tracemalloc

import numpy as np

from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict
from cdiff_jax.weights.torch_writer import (
    pickled_dict,
    pickled_int,
    pickled_str,
    pickled_tensor,
    write_archive,
    write_state_dict,
)

__all__ = [
    "assert_damage_is_read_or_refused",
    "fixture_state_dict",
    "full_file",
    "pickled_dict",
    "pickled_int",
    "pickled_str",
    "pickled_tensor",
    "write_archive",
    "write_state_dict",
]


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
            data = data[: int(rng.integers(0, len(raw)))]
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

"""Where a command may write: the probe finds the nearest folder, leaves nothing, and names the folder it failed in."""

import pathlib

import pytest

from cdiff_jax.paths import creatable_parent


def test_the_nearest_existing_folder_is_probed_and_left_as_it_was(tmp_path):
    assert creatable_parent(tmp_path / "a" / "b" / "out") == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_a_folder_nothing_can_be_created_in_is_named(tmp_path):
    with pytest.raises(OSError) as err:
        creatable_parent(pathlib.Path("/proc/cdiff_out"))  # Linux: a virtual file system
    assert err.value.filename == "/proc"

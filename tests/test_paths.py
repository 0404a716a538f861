"""Where a command may write: the probe finds the nearest folder, leaves nothing, and names the folder it failed in;
a write that fails while a command works is one line naming the path."""

import errno
import logging
import os
import pathlib

import pytest

from cdiff_jax.paths import CannotWrite, creatable_parent, write_error, writing


def test_the_nearest_existing_folder_is_probed_and_left_as_it_was(tmp_path):
    assert creatable_parent(tmp_path / "a" / "b" / "out") == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_a_folder_nothing_can_be_created_in_is_named(tmp_path):
    with pytest.raises(OSError) as err:
        creatable_parent(pathlib.Path("/proc/cdiff_out"))  # Linux: a virtual file system
    assert err.value.filename == "/proc"


FULL = (
    'RESOURCE_EXHAUSTED: Error writing "w/c/0": Failed to write 3505159 bytes: No space left on device '
    "[os_error_code='28']"
)  # what tensorstore, orbax's writer, raises on a full disk: a ValueError


def test_the_os_error_behind_a_failure_is_found_in_its_chain_or_in_tensorstore_words():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("saving failed") from err
    except RuntimeError as err:
        assert write_error(err).errno == errno.ENOSPC
    found = write_error(ValueError(FULL))
    assert (found.errno, found.strerror) == (errno.ENOSPC, "No space left on device")
    assert write_error(ValueError("a shape mismatch")) is None


def test_a_failed_write_becomes_one_line_naming_the_path(tmp_path):
    with pytest.raises(CannotWrite) as err, writing(tmp_path / "out"):
        raise ValueError(FULL)
    assert str(err.value) == (
        f"cannot write {tmp_path / 'out'}: No space left on device; nothing was written "
        "(free space or choose another --out)"
    )
    with pytest.raises(ValueError, match="a shape mismatch"), writing(tmp_path / "out"):
        raise ValueError("a shape mismatch")  # not a failed write: as it was


def test_a_block_that_reads_too_takes_only_what_no_read_raises_for_a_failed_write(tmp_path):
    with pytest.raises(FileNotFoundError), writing(tmp_path / "out", reads_too=True):
        (tmp_path / "missing_input").read_bytes()
    with pytest.raises(CannotWrite, match="Disk quota exceeded; resume"), writing(tmp_path, "resume", reads_too=True):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


def test_orbax_tracebacks_of_a_failed_write_are_dropped_and_others_kept(tmp_path):
    """orbax logs a failed write from its threads and raises it to the caller as well: only the caller's line shows."""
    with writing(tmp_path / "out"):  # installs the filter
        pass
    logger = logging.getLogger("absl")
    shown = []
    handler = logging.Handler()
    handler.emit = shown.append
    logger.addHandler(handler)
    try:
        for message in (FULL, "a shape mismatch"):
            try:
                exec(
                    compile("raise ValueError(message)", "/venv/orbax/checkpoint/future.py", "exec"),
                    {"message": message},
                )
            except ValueError:
                logger.error("thread raised", exc_info=True)
    finally:
        logger.removeHandler(handler)
    assert [r.exc_info[1].args[0] for r in shown] == ["a shape mismatch"]

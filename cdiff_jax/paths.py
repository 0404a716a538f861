"""Where a command may write, checked by creating a folder before any work; and the one line it prints
when a write fails while it works (a full disk, a quota, a read-only or vanished mount).

Training output may also go to an object store (`--workdir gs://bucket/run`): `output_path` keeps such a path as
an `etils.epath.Path` (its files are read and written through epath's gs:// backend, orbax's through tensorstore),
a local one as the absolute `pathlib.Path` it always was. Object stores have no folders to probe, no appends and
no atomic renames: the writers that rely on those on a local disk (`creatable_parent`, `atomic_directory`,
`viz.save_png`, the metrics files) write remote objects whole and in place instead (each says how).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import re
import sys
import tempfile
import traceback

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://", "az://", "hf://")  # what epath.Path reads and writes through its backends


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names an object in a store (gs://, s3://, ...) rather than a local file."""
    return os.fspath(path).startswith(REMOTE_SCHEMES)


def output_path(path: str | os.PathLike) -> pathlib.Path | epath.Path:
    """`path` as an absolute local `pathlib.Path`, or, for gs:// and the other remote schemes, as an
    `epath.Path` (never made absolute, which would turn `gs://bucket/run` into a local folder named `gs:`)."""
    if is_remote(path):
        return epath.Path(path)
    return pathlib.Path(path).absolute()


def creatable_parent(path: pathlib.Path | epath.Path) -> pathlib.Path | epath.Path:
    """The nearest existing folder above `path`, once a folder was created (and removed) in it: permissions alone
    do not tell a read-only or full file system, or a virtual one like /proc. Raises OSError naming that folder.

    A remote `path` (gs://...) is not probed: an object store has no folders to create, and a probe object would
    cost a round trip for nothing a failed first write does not tell; its parent is returned as it is."""
    if is_remote(path):
        return epath.Path(path).parent
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    try:
        tempfile.TemporaryDirectory(prefix=".cdiff-probe-", dir=existing).cleanup()
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(existing)) from None
    return existing


class CannotWrite(Exception):
    """A write failed while a command worked; the message is the one line it prints."""


# tensorstore (orbax's writer) raises ValueError, not OSError: "... No space left on device [os_error_code='28']".
_TENSORSTORE_OS_ERROR = re.compile(r"\[os_error_code='?(\d+)'?\]")


def write_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`: itself, one in its chain of causes and contexts, or the one tensorstore names in
    its message; None when there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            return err
        code = _TENSORSTORE_OS_ERROR.search(str(err))
        if code:
            return OSError(int(code[1]), os.strerror(int(code[1])))
        err = err.__cause__ or err.__context__
    return None


class _ReportedWriteFailures(logging.Filter):
    """Drops orbax's own tracebacks (logged from its save threads) of a failed write: orbax raises the failure to
    the caller too, where it becomes the command's one line. Told by the exception's frames, not by the record's
    caller, which is absl's own module when the "absl" logger was made before absl was imported."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or write_error(record.exc_info[1]) is None:
            return True
        return not any("orbax" in frame.f_code.co_filename for frame, _ in traceback.walk_tb(record.exc_info[2]))


def quiet_orbax_failures() -> None:
    """Keep orbax's noise around a failure it raises to its caller off the terminal, once per process: the
    tracebacks its threads log of a failed write, and tensorstore's reports of "Event loop is closed" (when a save
    or restore fails, orbax closes its event loop while tensorstore's other reads and writes are in flight; each
    then reports it as an unraisable exception, which Python prints as a traceback, hundreds around our one line).
    Any other unraisable exception reaches the previous hook."""
    logger = logging.getLogger("absl")  # orbax logs through absl
    if not any(isinstance(f, _ReportedWriteFailures) for f in logger.filters):
        logger.addFilter(_ReportedWriteFailures())
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


# What only a write fails with: no space, over quota, a file too large, a read-only file system.
WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


@contextlib.contextmanager
def writing(path, then: str = "nothing was written (free space or choose another --out)", *, reads_too=False):
    """Raise a failed write in the block as CannotWrite("cannot write PATH: REASON; THEN"). Wrap the whole atomic
    write, so that its temporary folder is gone when THEN says nothing was written. A block that `reads_too` takes
    only WRITE_ONLY_ERRNOS for a failed write: a read's OSError (a missing or unreadable input) is the input's fault,
    and its own message says so."""
    quiet_orbax_failures()
    try:
        yield
    except CannotWrite:
        raise
    except Exception as err:
        failure = write_error(err)
        if failure is None or (reads_too and failure.errno not in WRITE_ONLY_ERRNOS):
            raise
        raise CannotWrite(f"cannot write {path}: {failure.strerror or failure}; {then}") from err

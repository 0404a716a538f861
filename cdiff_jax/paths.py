"""Where a command may write: checked by creating a folder, before any work."""

from __future__ import annotations

import pathlib
import tempfile


def creatable_parent(path: pathlib.Path) -> pathlib.Path:
    """The nearest existing folder above `path`, once a folder was created (and removed) in it: permissions alone
    do not tell a read-only or full file system, or a virtual one like /proc. Raises OSError naming that folder."""
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    try:
        tempfile.TemporaryDirectory(prefix=".cdiff-probe-", dir=existing).cleanup()
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(existing)) from None
    return existing

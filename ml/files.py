"""Durable file writes: a file is either wholly there or not there at all.

:func:`atomic_write_bytes` writes to a temporary file in the target's own folder, flushes and
fsyncs it, renames it over the target (atomic on POSIX within one file system) and fsyncs the
folder, so a crash or power loss leaves the old file or the new one, never a torn one. A full
disk (or a file-size limit) raises :class:`DiskFullError` naming the folder and the bytes
needed, and no partial or temporary file is left behind (TC-ASYNC-081).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from core.exceptions import OperationalError

#: errno values meaning "no room": disk full, quota exceeded, file-size limit.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(OperationalError):
    """A file could not be written for lack of space; nothing partial was left behind."""


def free_bytes(folder: Path) -> int:
    """Free bytes on ``folder``'s file system (0 when it cannot be read)."""
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return 0


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir).

    Returns:
        ``path``.

    Raises:
        DiskFullError: no space (or a file-size limit) in ``path``'s folder; the message names
            the folder, the bytes needed and the bytes free. The temporary file is removed.
        OSError: any other write failure (the temporary file is removed too).
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise DiskFullError(
                f"Disk full: could not write {path.name} ({len(data):,} bytes) to {folder}: "
                f"{free_bytes(folder):,} bytes free there, {len(data):,} needed; free space in "
                f"{folder} (or move that folder to a larger disk) and run again "
                f"({os.strerror(e.errno)})"
            ) from e
        raise
    _fsync_dir(folder)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)

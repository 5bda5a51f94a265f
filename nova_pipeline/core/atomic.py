"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

This is the classic POSIX recipe (see e.g. the LWN article "Ensuring data reaches disk", 2011): a reader
sees either the old file or the whole new one, never a partial write. A manifest or pointer written this
way acts as a commit marker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["TMP_PREFIX", "atomic_write_bytes", "atomic_write_with", "atomic_writer", "fsync_dir", "syncfs"]

TMP_PREFIX = ".tmp-"

_libc = None


def syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` (Linux ``syncfs(2)``; ``os.sync`` elsewhere)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syncfs  # noqa: B018
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename inside it is durable.

    Raises:
        OSError: if the directory cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` atomically when the block exits cleanly.

    On an exception the temp file is removed and ``path`` is untouched.

    Raises:
        OSError: from the write, fsync or rename (e.g. ``ENOSPC``); nothing partial is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temp file and rename it over ``path`` atomically."""
    with atomic_writer(path) as fh:
        write(fh)

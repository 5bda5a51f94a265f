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
from collections.abc import Callable
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


class _AtomicWriter:
    """A temp file next to ``path`` inside a ``with`` block; renamed over ``path`` when the block exits
    cleanly, removed when it raises."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp: str  # set on entering
        self.fh: BinaryIO

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.path.parent)
        try:
            self.fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        return self.fh

    def __exit__(self, exc_type, exc, tb) -> None:  # an exception in the block goes on
        try:
            try:
                if exc_type is None:
                    self.fh.flush()
                    os.fsync(self.fh.fileno())
            finally:
                self.fh.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        except BaseException:
            self._discard()
            raise
        if exc_type is not None:
            self._discard()
            return
        fsync_dir(self.path.parent)

    def _discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def atomic_writer(path: Path) -> _AtomicWriter:
    """A binary file, for a ``with`` block, whose content replaces ``path`` atomically when the block exits
    cleanly: flushed, fsynced, renamed over ``path``, then the directory fsynced.

    On an exception the temp file is removed and ``path`` is untouched.

    Raises:
        OSError: from the write, fsync or rename (e.g. ``ENOSPC``); nothing partial is left behind.
    """
    return _AtomicWriter(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temp file and rename it over ``path`` atomically."""
    with atomic_writer(path) as fh:
        write(fh)

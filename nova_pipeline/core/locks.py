"""The locks of ``NOVA_HOME``, and the one order in which every process takes them.

Writers of the vector stores (the embedded primary ``NOVA_HOME/vectors``, a Chroma server's collection, the
runtime copy ``NOVA_HOME/runtime/vectors``) and of the failover pointer are separate processes: ``nova
rebuild``, a run's step, the daemon's sensors, ``nova serve``'s admin routes, ``nova watch``. Concurrent
writers corrupt an embedded Chroma data dir (chroma #7040), and a pointer read-modify-write that races
another loses one of them. So every writer takes these ``flock(2)`` locks, always in this order, and never
takes an earlier one while it holds a later one:

1. ``vectors.lock``, **the writer lock** (:func:`writer_lock`): the whole vector store. It also takes every
   bucket lock (2.), so it excludes the slices of a server-mode run as well as other whole-store writers.
   The runtime copy (made by ``golden_copy``, written while failed over, replayed by failback) is written
   only under it.
2. ``locks/vectors-bucket-NN.lock``, **the bucket locks** (:func:`bucket_locks`), ascending: one writer per
   bucket of a Chroma server's collection, so the slices of one run write side by side.
3. ``failover/pointer.lock``, **the pointer lock** (:func:`pointer_lock`): every read-modify-write of the
   failover pointer. Held for milliseconds.
4. In one process only, the condition of the writer's shared client
   (:class:`~nova_pipeline.core.live.client.WriterClient`, ``nova serve --watch``): held for bookkeeping,
   never while waiting for another lock; readers take it without the writer lock.
5. In one process only, the bookkeeping lock of the view a run's steps share
   (:mod:`~nova_pipeline.core.index.run_view`): taken under the writer lock or without it, held for
   bookkeeping only, never while waiting for another lock.
6. In one process only, ``nova watch``'s event condition
   (:class:`~nova_pipeline.core.live.events.FileEvents`): taken by the file observer's thread and by the
   watcher between updates (and by a stop signal's handler: it is re-entrant), never while holding or
   waiting for another lock.

Opening an embedded Chroma data dir writes to it (every client rewrites a few of its files when it opens
them), so even a reader opens one only under the writer lock, held for the open alone (a few milliseconds;
:func:`~nova_pipeline.core.index.vector_store.fresh_client`); its queries then run without any lock. Other
readers take no lock. They see writes because every shared file is replaced atomically (temp file, fsync,
rename), and because releasing the writer lock marks a new **generation** of the vector stores
(``NOVA_HOME/vectors.generation``, :func:`generation`): a long-running reader (``nova serve``) compares it
before each query and reopens its view of an embedded store when it changed, so it never answers from an
index that another process has since rewritten.

The locks are re-entrant within a thread (a writer that holds the writer lock may call code that takes it
again), exclusive between threads of one process, and exclusive between processes (``flock`` on the same
file from two open file descriptions conflicts, even in one process, so a per-process registry sits in
front of it). A lock dies with its process: ``kill -9`` leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import LockTimeoutError
from nova_pipeline.core.layout import Layout

_log = logging.getLogger(__name__)

__all__ = [
    "LOCK_ORDER",
    "bucket_locks",
    "generation",
    "held",
    "on_new_generation",
    "pointer_lock",
    "writer_lock",
]

BUCKETS = 16  # the vector store's fixed buckets (index.vector_store.BUCKETS); one lock file each
LOCK_ORDER = (
    "writer (vectors.lock)",
    "buckets ascending (locks/vectors-bucket-NN.lock)",
    "pointer (failover/pointer.lock)",
)
POLL_S = 0.05


@dataclass
class _Held:
    """One lock file held by this process: the owning thread and the open file."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    owner: int | None = None
    fh: object = None


_registry: dict[str, _Held] = {}
_registry_lock = threading.Lock()


def held(path: Path) -> bool:
    """Whether the calling thread holds the lock file ``path``."""
    h = _registry.get(str(path))
    return h is not None and h.owner == threading.get_ident()


class _FileLock:
    """Hold one lock file exclusively (re-entrant in the owning thread) inside a ``with`` block.

    Raises (on entering):
        LockTimeoutError: another thread or process held it for ``timeout`` seconds.
    """

    def __init__(self, path: Path, timeout: float, what: str):
        self.path, self.timeout, self.what = path, timeout, what
        self._held: _Held  # set on entering
        self._nested = False

    def __enter__(self) -> None:
        with _registry_lock:
            h = _registry.setdefault(str(self.path), _Held())
        me = threading.get_ident()
        if h.owner == me:  # re-entered: the outermost holder releases it
            self._held, self._nested = h, True
            return
        deadline = time.monotonic() + self.timeout
        if not h.guard.acquire(timeout=max(self.timeout, 0.0)):
            raise LockTimeoutError(
                f"another thread of this process holds {self.path} ({self.what}) since {self.timeout:.0f} s"
            )
        fh = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # closed by __exit__, or below when the lock is not had
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeoutError(
                            f"another process holds {self.path} ({self.what}) since {self.timeout:.0f} s: "
                            "is a rebuild, a failover or `nova watch` running? It is released when that "
                            "process ends"
                        ) from None
                    time.sleep(POLL_S)
        except BaseException:
            if fh is not None:
                fh.close()
            h.guard.release()
            raise
        h.owner, h.fh = me, fh
        self._held = h

    def __exit__(self, *exc) -> None:
        h = self._held
        if self._nested:
            return
        fh = h.fh
        h.owner, h.fh = None, None
        try:
            fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()
            h.guard.release()


class _BucketLocks:
    """The lock files of some buckets, taken in ascending order inside a ``with`` block, released in reverse.

    Raises (on entering):
        LockTimeoutError: another writer held one of them for ``timeout`` seconds (those taken are released).
    """

    def __init__(self, layout: Layout, buckets: Sequence[int], timeout: float):
        self.layout, self.timeout = layout, timeout
        self.buckets = sorted({int(b) for b in buckets})
        self._taken: list[_FileLock] = []

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            for b in self.buckets:
                lock = _FileLock(
                    self.layout.vectors_bucket_lock(b),
                    max(0.0, deadline - time.monotonic()),
                    f"bucket {b} of the vector store",
                )
                lock.__enter__()
                self._taken.append(lock)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        while self._taken:
            self._taken.pop().__exit__()


class _WriterLock:
    """The writer lock with every bucket lock; releasing the outermost one marks a new generation."""

    def __init__(self, layout: Layout, timeout: float, bump: bool):
        self.layout, self.timeout, self.bump = layout, timeout, bump
        self._file: _FileLock  # set on entering
        self._buckets: _BucketLocks
        self._outermost: bool

    def __enter__(self) -> _WriterLock:
        deadline = time.monotonic() + self.timeout
        self.before_release: list = []  # callables(before, after), called before the generation is marked
        self._outermost = not held(self.layout.vectors_lock)
        self._file = _FileLock(self.layout.vectors_lock, self.timeout, "the vector store's writer lock")
        self._file.__enter__()
        self._before = generation(self.layout) if self._outermost and self.bump else ""
        try:
            self._buckets = _BucketLocks(self.layout, range(BUCKETS), max(0.0, deadline - time.monotonic()))
            self._buckets.__enter__()
        except BaseException:
            self._file.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._buckets.__exit__()
            if self._outermost and self.bump:  # still under the lock: readers see the new generation after
                after = _next_generation()
                for hook in self.before_release:  # the holder's record of its writes, before readers look
                    try:
                        hook(self._before, after)
                    except Exception:  # noqa: BLE001 - a record that failed is no record; the lock must go
                        _log.warning("a record of this hold's writes failed", exc_info=True)
                _mark_generation(self.layout, after)
                for callback in list(_on_new_generation):
                    with contextlib.suppress(Exception):  # bookkeeping of this process; the lock must go
                        callback(self.layout, self._before, after)
        finally:
            self._file.__exit__()


def writer_lock(home: Path | Layout, timeout: float = 600.0, bump: bool = True) -> _WriterLock:
    """The writer lock of ``home``'s vector stores, with every bucket lock (lock order 1, then 2), for a
    ``with`` block.

    ``bump`` False: the holder only opens a view of an embedded store (which rewrites a few of Chroma's
    files, same content) and does not change what a reader would see, so the generation stays.

    Entering gives the hold: a callable appended to its ``before_release`` is called with ``(before,
    after)``, the generation when the hold began and the one it is about to mark, under the lock and before
    readers can see ``after`` (``nova watch`` records its writes there:
    :mod:`~nova_pipeline.core.index.recent_writes`). An error in it is logged and the lock still goes.

    Raises (on entering):
        LockTimeoutError: another writer held a lock for ``timeout`` seconds.
    """
    return _WriterLock(Layout.of(home), timeout, bump)


def generation(home: Path | Layout) -> str:
    """The current generation of ``home``'s vector stores: changes every time a writer releases the writer
    lock; ``""`` before the first. A few microseconds: one small file read, no lock."""
    try:
        return Layout.of(home).vectors_generation.read_text()
    except OSError:
        return ""


def _next_generation() -> str:
    return f"{time.time_ns()}-{os.getpid()}"


def _mark_generation(layout: Layout, new: str) -> None:
    atomic_write_bytes(layout.vectors_generation, new.encode())


_on_new_generation: list = []


def on_new_generation(callback) -> None:
    """Call ``callback(layout, before, after)`` each time this process releases the writer lock of a home
    and marks its new generation (``before`` was the generation when the hold began), still under the lock.
    For this process's own bookkeeping (:mod:`nova_pipeline.core.index.run_view`); an error in it is
    ignored."""
    _on_new_generation.append(callback)


def bucket_locks(home: Path | Layout, buckets: Sequence[int], timeout: float = 600.0) -> _BucketLocks:
    """Exclusive locks on the given buckets of the vector store (a server-mode writer of a slice; lock order
    2), for a ``with`` block. Taken in ascending order, so writers holding overlapping sets cannot deadlock.

    Raises (on entering):
        LockTimeoutError: another writer held one of the locks for ``timeout`` seconds.
    """
    return _BucketLocks(Layout.of(home), buckets, timeout)


def pointer_lock(home: Path | Layout, timeout: float = 30.0) -> _FileLock:
    """The failover pointer's lock (lock order 3, the last), for a ``with`` block around a read-modify-write
    of ``failover/state.json``.

    Raises (on entering):
        LockTimeoutError: another process held it for ``timeout`` seconds.
    """
    return _FileLock(Layout.of(home).failover / "pointer.lock", timeout, "the failover pointer")

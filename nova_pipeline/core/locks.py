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
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import LockTimeoutError
from nova_pipeline.core.layout import Layout

__all__ = ["LOCK_ORDER", "bucket_locks", "generation", "held", "pointer_lock", "writer_lock"]

BUCKETS = 16  # the vector store's fixed buckets (index.vector_store.BUCKETS); one lock file each
LOCK_ORDER = (
    "writer (vectors.lock)",
    "buckets ascending (locks/vectors-bucket-NN.lock)",
    "pointer (failover/pointer.lock)",
)
POLL_S = 0.05


@dataclass
class _Held:
    """One lock file held by this process: the owning thread, its depth, the open file."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    owner: int | None = None
    depth: int = 0
    fh: object = None


_registry: dict[str, _Held] = {}
_registry_lock = threading.Lock()


def held(path: Path) -> bool:
    """Whether the calling thread holds the lock file ``path``."""
    h = _registry.get(str(path))
    return h is not None and h.owner == threading.get_ident()


@contextlib.contextmanager
def _flock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold ``path`` exclusively (re-entrant in the owning thread) for the block.

    Raises:
        LockTimeoutError: another thread or process held it for ``timeout`` seconds.
    """
    key = str(path)
    with _registry_lock:
        h = _registry.setdefault(key, _Held())
    me = threading.get_ident()
    if h.owner == me:
        h.depth += 1
        try:
            yield
        finally:
            h.depth -= 1
        return
    deadline = time.monotonic() + timeout
    if not h.guard.acquire(timeout=max(timeout, 0.0)):
        raise LockTimeoutError(f"another thread of this process holds {path} ({what}) since {timeout:.0f} s")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # closed in the finally below
        try:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeoutError(
                            f"another process holds {path} ({what}) since {timeout:.0f} s: is a rebuild, "
                            "a failover or `nova watch` running? It is released when that process ends"
                        ) from None
                    time.sleep(POLL_S)
            h.owner, h.depth, h.fh = me, 1, fh
            try:
                yield
            finally:
                h.owner, h.depth, h.fh = None, 0, None
                fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()
    finally:
        h.guard.release()


@contextlib.contextmanager
def writer_lock(home: Path | Layout, timeout: float = 600.0, bump: bool = True) -> Iterator[None]:
    """The writer lock of ``home``'s vector stores, with every bucket lock (lock order 1, then 2).

    ``bump`` False: the holder only opens a view of an embedded store (which rewrites a few of Chroma's
    files, same content) and does not change what a reader would see, so the generation stays.

    Raises:
        LockTimeoutError: another writer held a lock for ``timeout`` seconds.
    """
    layout = Layout.of(home)
    deadline = time.monotonic() + timeout
    outermost = not held(layout.vectors_lock)
    with _flock(layout.vectors_lock, timeout, "the vector store's writer lock"):
        try:
            with bucket_locks(layout, range(BUCKETS), max(0.0, deadline - time.monotonic())):
                yield
        finally:
            if outermost and bump:  # still under the lock: readers see the new generation after the writes
                _bump_generation(layout)


def generation(home: Path | Layout) -> str:
    """The current generation of ``home``'s vector stores: changes every time a writer releases the writer
    lock; ``""`` before the first. A few microseconds: one small file read, no lock."""
    try:
        return Layout.of(home).vectors_generation.read_text()
    except OSError:
        return ""


def _bump_generation(layout: Layout) -> None:
    atomic_write_bytes(layout.vectors_generation, f"{time.time_ns()}-{os.getpid()}".encode())


@contextlib.contextmanager
def bucket_locks(home: Path | Layout, buckets: Sequence[int], timeout: float = 600.0) -> Iterator[None]:
    """Exclusive locks on the given buckets of the vector store (a server-mode writer of a slice; lock order
    2). Taken in ascending order, so writers holding overlapping sets cannot deadlock.

    Raises:
        LockTimeoutError: another writer held one of the locks for ``timeout`` seconds.
    """
    layout = Layout.of(home)
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        for b in sorted({int(b) for b in buckets}):
            stack.enter_context(
                _flock(
                    layout.vectors_bucket_lock(b),
                    max(0.0, deadline - time.monotonic()),
                    f"bucket {b} of the vector store",
                )
            )
        yield


@contextlib.contextmanager
def pointer_lock(home: Path | Layout, timeout: float = 30.0) -> Iterator[None]:
    """The failover pointer's lock (lock order 3, the last): hold it across a read-modify-write of
    ``failover/state.json``.

    Raises:
        LockTimeoutError: another process held it for ``timeout`` seconds.
    """
    with _flock(Layout.of(home).failover / "pointer.lock", timeout, "the failover pointer"):
        yield

"""Fresh, read-only views of an embedded Chroma data dir, for readers that live for days (``nova serve``).

Chroma's embedded client loads a collection's HNSW index when it opens the data dir and never sees what
another process writes later: on this machine, after another process deleted one vector and added four, an
open client's ``count`` said 54 while its ``query`` still ranked the 50 vectors it had loaded (the deleted
one among them). A client opened after the write saw all 54 in both.

So a reader never keeps one client across other processes' writes. Every writer holds the writer lock of
``NOVA_HOME`` (:mod:`nova_pipeline.core.locks`), and releasing it marks a new generation. A
:class:`ViewCache` compares the generation before each use; when it changed, it opens a new view (a separate
Chroma system on the same files, :func:`~nova_pipeline.core.index.vector_store.open_client_at` with
``view``), hands it to new readers, and closes the old one once its last reader is done. Opening rewrites a
few of Chroma's files (same content), so a view is opened only under the writer lock, waited for at most
:data:`OPEN_LOCK_TIMEOUT_S`; while a writer holds it, the current view keeps answering (or, before the
first, the primary counts as failed and the backup store answers). After the open the reader only
counts, gets and queries, which write nothing (a test checks the data dir's files), with no lock held.

Opening a view loads the collection's HNSW index, about 1 s at 60,000 vectors. When every write since the
view's generation was a ``nova watch`` update that left its record
(:mod:`~nova_pipeline.core.index.recent_writes`), the reader does not wait for that: it answers from the view
it has with the records folded over it (deleted and re-embedded chunks masked, new ones scored exactly), and
opens the fresh view on a thread of its own, which replaces the current one when it is open. Any other
writer leaves no record, and the reader opens the fresh view first, as above.

A query that runs while a writer is between its first write and the lock's release may see a partial
state; the searcher treats an error there as a failed primary query and answers from the backup store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nova_pipeline.core.errors import IndexNotBuiltError, LockTimeoutError, VectorStoreError
from nova_pipeline.core.index import recent_writes
from nova_pipeline.core.index.recent_writes import Overlaid, Overlay
from nova_pipeline.core.index.vector_store import (
    CHROMA_DB,
    get_collection,
    give_view_slot,
    open_view,
)
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.locks import generation, writer_lock

__all__ = ["ViewCache"]

log = logging.getLogger(__name__)

OPEN_LOCK_TIMEOUT_S = 1.0  # the longest a reader waits for a writer to let it open a view


@dataclass
class _View:
    slot: int
    generation: str
    client: object
    collection: object
    count: int
    readers: int = 0
    retired: bool = False


class ViewCache:
    """Read views of the collection ``fingerprint`` in the embedded data dir ``path`` of ``home``.

    Thread-safe. Opening a view (after a write) costs one Chroma open and its HNSW load: about 30-100 ms
    at a few thousand vectors, about 1 s at 60,000. A view of an unchanged generation costs one small file
    read; one behind ``nova watch``'s recorded updates a few more, while the fresh view opens behind it.
    """

    def __init__(self, home: Path | Layout, path: Path, fingerprint: str):
        self.layout = Layout.of(home)
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self._current: _View | None = None
        self._live: dict[int, _View] = {}  # slot -> view still open (current, or retired with readers)
        self.opened = 0  # views opened so far (the first, and one per generation change seen)
        self._overlay_of: tuple = (None, None, 0)  # (view slot and generations), its Overlay or None, count
        self._opening = False  # a view is being opened behind the current one
        self._closed = False

    @contextlib.contextmanager
    def collection(self) -> Iterator[tuple[object, int]]:
        """``(collection, count when the view was opened)`` of the current generation, for the block.

        Raises:
            IndexNotBuiltError: there is no data dir or no collection of this fingerprint.
            VectorStoreError: the data dir cannot be opened.
        """
        if not (self.path / CHROMA_DB).is_file():  # the data dir went away under an open view
            self.invalidate()
            raise IndexNotBuiltError(f"no vector index at {self.path.name}/: its data dir is gone")
        gen = generation(self.layout)
        with self._lock:
            view, overlay = self._current, None
            if view is not None and view.generation != gen:
                overlay = self._overlay(view, gen)
                if overlay is not None:  # answer from this view and nova watch's records; open behind
                    self._open_behind(gen)
            if view is None or (view.generation != gen and overlay is None):
                try:
                    view = self._open(gen)
                except LockTimeoutError:
                    if view is None:
                        raise VectorStoreError(
                            f"the vector store {self.path.name}/ is being written (a writer holds its lock): "
                            "no view of it is open yet"
                        ) from None
                    # a writer took the lock again since: keep answering from the view we have
                    log.debug(
                        "a writer holds %s: keeping view %d until the lock is free", self.path, view.slot
                    )
            view.readers += 1
        try:
            if overlay is None:
                yield view.collection, view.count
            else:
                yield Overlaid(view.collection, overlay), self._overlay_of[2]
        finally:
            with self._lock:
                view.readers -= 1
                if view.retired and view.readers == 0:
                    self._close(view)

    def invalidate(self) -> None:
        """Drop the current view (a reader found it failing); the next use opens a new one."""
        with self._lock:
            if self._current is not None:
                self._retire(self._current)
                self._current = None

    def _overlay(self, view: _View, gen: str) -> Overlay | None:
        """``nova watch``'s records from ``view``'s generation to ``gen``, or None; kept for the pair, with
        the count now (a view counts from Chroma's SQLite, fresh)."""
        key = (view.slot, view.generation, gen)
        if self._overlay_of[0] != key:
            name = recent_writes.store_key(self.layout.home, self.path, view.collection)
            overlay = recent_writes.chain(self.layout.home, view.generation, gen, name)
            self._overlay_of = (key, overlay, view.collection.count() if overlay is not None else 0)
        return self._overlay_of[1]

    def _open_behind(self, gen: str) -> None:
        """Open the view of ``gen`` on a thread of its own (one at a time); called under ``self._lock``."""
        if self._opening or self._closed:
            return
        self._opening = True
        threading.Thread(
            target=self._open_in_background, args=(gen, self._current), name="view-open", daemon=True
        ).start()

    def _open_in_background(self, gen: str, behind: _View | None) -> None:
        try:
            # the newest generation (``gen`` may have moved on since the thread was asked for); its HNSW
            # load happens here, while queries use the older view
            view = self._open_view(generation(self.layout) or gen)
        except Exception as exc:  # noqa: BLE001 - a writer holds the lock, or the open failed: the next query retries
            log.debug("opening a view of %s behind the current one failed: %s", self.path, exc)
            with self._lock:
                self._opening = False
            return
        with self._lock:
            self._opening = False
            if self._closed or self._current not in (behind, None):  # a query opened a newer one meanwhile
                _close_client(view.client, view.slot)
                return
            self._install(view)

    def close(self) -> None:
        """Close every view without readers (at shutdown)."""
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._retire(self._current)
                self._current = None

    def _open(self, gen: str) -> _View:
        return self._install(self._open_view(gen))

    def _open_view(self, gen: str) -> _View:
        # opening writes to the data dir (locks.py): only with no writer at work, and for a moment
        with writer_lock(self.layout, OPEN_LOCK_TIMEOUT_S, bump=False):
            client, slot = open_view(self.path, create=False)
        try:
            col = get_collection(client, self.fingerprint, create=False)
            count = col.count()
        except (IndexNotBuiltError, VectorStoreError):
            _close_client(client, slot)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to read the fresh view is the store's failure
            _close_client(client, slot)
            raise VectorStoreError(f"the Chroma data dir {self.path.name}/ cannot be read ({exc})") from exc
        return _View(slot, gen, client, col, count)

    def _install(self, view: _View) -> _View:
        if self._current is not None:
            self._retire(self._current)
        self._current, self._live[view.slot] = view, view
        self.opened += 1
        log.debug(
            "opened view %d of %s at generation %s (%d vectors)",
            view.slot,
            self.path,
            view.generation or "-",
            view.count,
        )
        return view

    def _retire(self, view: _View) -> None:
        view.retired = True
        if view.readers == 0:
            self._close(view)

    def _close(self, view: _View) -> None:
        self._live.pop(view.slot, None)
        _close_client(view.client, view.slot)


def _close_client(client, slot: int) -> None:
    with contextlib.suppress(Exception):  # a client that failed half-way has nothing more to release
        client.close()
    give_view_slot(slot)

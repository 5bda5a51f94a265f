"""The writer's Chroma client of ``nova watch``, kept open between updates, and shared with a searcher in
the same process (``nova serve --watch``).

:meth:`WriterClient.writing` gives the active store under the writer lock with this client, reopened only
when another process wrote since or the store changed. :meth:`WriterClient.reading` lends the same client
to readers while it is current for the primary; :meth:`WriterClient.close` waits for them. Lock order: the
writer lock (:mod:`nova_pipeline.core.locks`), then this object's condition, held only for bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

from nova_pipeline.core.settings import Settings

__all__ = ["WriterClient"]

log = logging.getLogger(__name__)


class WriterClient:
    """The client of one writer (one :class:`~nova_pipeline.core.live.updater.LiveIndex`). Thread-safe
    for readers; one writer thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = None  # the store's client, kept between writes (see writing)
        self._label: str | None = None
        self._slot: int | None = None
        self._known: str | None = None  # the vector stores' generation this client has seen
        # readers of the client through reading() (nova serve --watch), waited for before it is closed
        self._share = threading.Condition()
        self._readers = 0
        self._shared: tuple | None = None  # (client, fingerprint, collection, count) given to readers
        self._hold = None  # the writer lock's hold, inside writing()

    def record_writes(self, collection, part, vectors, removed: list[str]) -> None:
        """Inside :meth:`writing`: leave the record of this hold's writes to the embedded primary
        (:mod:`~nova_pipeline.core.index.recent_writes`: ``part``'s chunk rows upserted with ``vectors``,
        ``removed`` deleted), written as the lock is released, so that a separate ``nova serve`` answers
        with them from the view it has while it opens a fresh one. Nothing for the backup store or a
        server (whose readers are never stale)."""
        from nova_pipeline.core.index import recent_writes
        from nova_pipeline.core.index.vector_store import record_metadatas
        from nova_pipeline.core.serving.pointer import PRIMARY

        hold = self._hold
        if hold is None or self._label != PRIMARY or self.settings.chroma_url:
            return
        home = self.settings.home
        try:
            name = recent_writes.store_key(home, self.settings.layout.vectors, collection)
            ids, metas = part["chunk_id"].tolist(), record_metadatas(collection, part)
        except Exception:  # noqa: BLE001 - no record: readers open a fresh view, and the update stands
            log.warning("the record of this update's writes could not be made", exc_info=True)
            return
        hold.before_release.append(
            lambda before, after: recent_writes.record(
                home, before, after, name, ids, vectors, metas, list(removed)
            )
        )

    @contextlib.contextmanager
    def writing(self):
        """The active store under the writer lock (as :func:`~nova_pipeline.core.serving.failover.writing_to`
        gives it: the pointer read under the lock, journaled while failed over), with the client kept open
        between updates. It is reopened only when another process wrote since (the generation
        is not the one this process marked) or the store changed: the first write on a new view of an
        embedded store loads its vector index, about 0.3 s at 60,000 chunks."""
        from nova_pipeline.core.locks import generation, writer_lock
        from nova_pipeline.core.serving.failover import active_store

        home = self.settings.home
        with writer_lock(home) as hold:
            self._hold = hold
            store = active_store(home, self.settings.chroma_url)
            if self.client is None or self._label != store.label or generation(home) != self._known:
                self.close()
                self._open(store)
            store._client = self.client
            try:
                yield store
            finally:
                self._hold = None
                self._shared = None  # readers look the collection up again (a catch-up may switch schema)
        now = generation(home)  # ours, unless another writer came in right after the release
        self._known = now if now.endswith(f"-{os.getpid()}") else None

    def _open(self, store) -> None:
        from nova_pipeline.core.index.vector_store import open_client, open_view
        from nova_pipeline.core.locks import generation
        from nova_pipeline.core.serving.pointer import BACKUP

        home = self.settings.home
        if store.label != BACKUP and self.settings.chroma_url:
            self.client, self._slot = open_client(home, self.settings.chroma_url), None
        else:
            where = (
                self.settings.layout.runtime_vectors
                if store.label == BACKUP
                else self.settings.layout.vectors
            )
            client, slot = open_view(where, True)
            with self._share:
                self.client, self._slot = client, slot
        with self._share:
            self._label, self._known = store.label, generation(home)

    @contextlib.contextmanager
    def reading(self, fingerprint: str) -> Iterator[tuple[object, int] | None]:
        """``(collection, count)`` of the primary collection of ``fingerprint`` through this client, for a
        searcher in the writer's process (``nova serve --watch``): one client, so a search sees an
        update the moment its vectors are written, with no view to reopen. None when this client cannot
        answer for the primary: it is not open, it is the backup store's (failed over), it talks to a
        server (a server has no stale views), or another process wrote since this client's writer last did
        (this client may not see that write; the caller's fresh views do).

        The client stays open until the block ends (closing it waits for readers). Thread-safe.

        Raises:
            IndexNotBuiltError: the store has no collection of ``fingerprint``.
        """
        from nova_pipeline.core.index.vector_store import get_collection
        from nova_pipeline.core.locks import generation
        from nova_pipeline.core.serving.pointer import PRIMARY

        with self._share:
            client = self.client
            if (
                client is None
                or self._label != PRIMARY
                or self.settings.chroma_url
                or self._known is None
                or generation(self.settings.home) != self._known
            ):
                client = None
            else:
                self._readers += 1
        if client is None:
            yield None
            return
        try:
            shared = self._shared
            if shared is None or shared[0] is not client or shared[1] != fingerprint:
                col = get_collection(client, fingerprint, create=False)
                # counted once per write, as a view counts once when it is opened
                shared = self._shared = (client, fingerprint, col, col.count())
            yield shared[2], shared[3]
        finally:
            with self._share:
                self._readers -= 1
                self._share.notify_all()

    def close(self) -> None:
        """Close the client, once the readers of it are done."""
        from nova_pipeline.core.index.vector_store import give_view_slot

        with self._share:  # readers (reading()) finish their query first, and no new one takes it
            self._share.wait_for(lambda: self._readers == 0)
            client, slot = self.client, self._slot
            self.client, self._slot, self._shared = None, None, None
        if client is not None:
            # closing writes nothing; a half-open client releases nothing
            with contextlib.suppress(Exception):
                client.close()
        if slot is not None:
            give_view_slot(slot)

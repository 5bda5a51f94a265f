"""Search: one path for the Python API, ``nova search`` and ``nova serve``.

A :class:`Searcher` reads the failover pointer (``NOVA_HOME/failover/state.json``) on every query:

* primary active: the primary is queried, bounded by ``query_timeout_s``; a query that fails or times out
  is answered from the backup store in the same call, and counts as a failure on the searcher's circuit
  breaker (pybreaker; 3 failures open it, so the next queries go straight to the backup until it
  half-opens after 30 s and a trial query decides);
* backup active: the backup store answers.

The backup store is made from the CURRENT golden copy: in memory (a Chroma ``EphemeralClient`` loaded from
CURRENT's export) when the resource estimate allows it, else the on-disk runtime copy; it is reloaded when
CURRENT changes, and built on first use. Every hit says which store answered, and a backup answer carries
``stale_as_of``: when the golden version it came from was made.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass

import pybreaker

from nova_pipeline.core.embedding import Embedder, SentenceTransformerEmbedder, bundled_fingerprint
from nova_pipeline.core.errors import FailoverError, IndexNotBuiltError, NovaError
from nova_pipeline.core.failover import (
    BACKUP,
    DISK,
    MEMORY,
    PRIMARY,
    FailoverSettings,
    estimate_for_version,
    read_state,
)
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.vector_store import Hit, get_collection, open_client, open_client_at, query

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """Hits, best first, and where they came from.

    ``fell_back`` is True when the primary was active but failed or timed out on this query
    (``primary_error`` says how).
    """

    hits: list[Hit]
    store: str
    stale_as_of: str | None = None
    fell_back: bool = False
    primary_error: str = ""


class BackupStore:
    """The backup store: CURRENT's export in memory when the estimate allows (and ``prefer_memory``), else
    the on-disk runtime copy. Thread-safe; reloaded when CURRENT changes."""

    def __init__(self, settings: Settings, fingerprint: str, failover: FailoverSettings,
                 prefer_memory: bool = True):
        self.settings, self.fingerprint, self.failover = settings, fingerprint, failover
        self.prefer_memory = prefer_memory
        self._lock = threading.Lock()
        self._collection = None
        self.version: str | None = None
        self.created_at: str | None = None
        self.kind: str | None = None
        self.estimate = None

    def collection(self):
        """``(collection, golden version created_at)``, loading or reloading as needed.

        Raises:
            IndexNotBuiltError: there is no golden copy yet.
            FailoverError: the estimate refuses both kinds of backup store.
        """
        from nova_pipeline.core import golden

        cur = golden.current_version(self.settings.home)
        if cur is None:
            raise IndexNotBuiltError(
                "no golden copy to answer from: run the rebuild job while the primary is up"
            )
        with self._lock:
            if self._collection is None or self.version != cur.name:
                self._load(cur)
            return self._collection, self.created_at

    def _load(self, cur) -> None:
        from nova_pipeline.core import golden

        runtime = self.settings.layout.runtime_vectors
        est = estimate_for_version(cur, max_memory_mb=self.failover.max_memory_mb, disk_copy=runtime.is_dir())
        if est.choice == MEMORY and self.prefer_memory:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
            name = f"backup-{self.fingerprint}"
            if self._collection is not None:
                client.delete_collection(self._collection.name)
            col = client.get_or_create_collection(
                name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
            golden.import_export(col, cur.path)
            kind = MEMORY
        elif est.choice in (MEMORY, DISK):
            col = get_collection(open_client_at(runtime), self.fingerprint, create=False)
            kind = DISK
        else:
            raise FailoverError(est.message)
        self._collection, self.version, self.created_at, self.kind, self.estimate = (
            col,
            cur.name,
            cur.created_at,
            kind,
            est,
        )
        log.info(
            "backup store: golden version %s %s (%s)",
            cur.name,
            "in memory" if kind == MEMORY else f"on disk at {runtime}",
            est.message,
        )


class Searcher:
    """Searches with failover (see the module docstring). One per process is enough; thread-safe.

    Args:
        settings: ``NOVA_HOME`` and ``NOVA_CHROMA_URL``.
        embedder: the query embedder (default: the bundled model, loaded on the first query).
        failover: timeouts and breaker settings (default: from the environment).
        prefer_memory: let the backup store live in memory when the estimate allows (``nova serve``); the
            one-shot API and CLI use the on-disk runtime copy.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        failover: FailoverSettings | None = None,
        prefer_memory: bool = False,
    ):
        self.settings = settings
        self.failover = failover or FailoverSettings.from_env()
        self._embedder = embedder
        self.fingerprint = embedder.fingerprint if embedder is not None else bundled_fingerprint()
        self.backup = BackupStore(settings, self.fingerprint, self.failover, prefer_memory)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=self.failover.failure_threshold,
            reset_timeout=self.failover.half_open_after_s,
            name="search",
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="primary-query")
        self._primary = None
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = SentenceTransformerEmbedder()
            return self._embedder

    def _primary_collection(self):
        with self._lock:
            if self._primary is None:
                client = open_client(self.settings.home, self.settings.chroma_url)
                self._primary = get_collection(client, self.fingerprint, create=False)
            return self._primary

    def _query_primary(self, vectors, k: int) -> list[Hit]:
        def run():
            try:
                return query(self._primary_collection(), vectors, k)[0]
            except IndexNotBuiltError:
                raise
            except Exception:
                with self._lock:
                    self._primary = None  # a client in a bad state is opened again next time
                raise

        future = self._pool.submit(run)
        try:
            return future.result(timeout=self.failover.query_timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"the primary did not answer within {self.failover.query_timeout_s:g} s"
            ) from None

    def search(self, text: str, k: int = 5) -> SearchResult:
        """The ``k`` chunks nearest to ``text``, from the store the pointer names (with per-query fallback).

        Raises:
            IndexNotBuiltError: nothing was indexed yet (the message says to run the rebuild job).
            VectorStoreError, FailoverError: neither the primary nor a backup store can answer.
        """
        vectors = self.embedder.embed([text])
        state = read_state(self.settings.home)
        error = ""
        if not state.failed_over:
            try:
                hits = self.breaker.call(self._query_primary, vectors, k)
                return SearchResult(hits=_label(hits, PRIMARY, None), store=PRIMARY)
            except IndexNotBuiltError:
                raise
            except pybreaker.CircuitBreakerError as exc:
                error = f"the search breaker is open ({exc})"
            except Exception as exc:  # noqa: BLE001 - any failure of the primary falls back
                error = f"{type(exc).__name__}: {exc}"
            log.warning("primary query failed, answering from the backup store: %s", error)
        try:
            col, stale = self.backup.collection()
        except NovaError:
            if error:
                raise FailoverError(f"the primary failed ({error}) and no backup store can answer") from None
            raise
        hits = query(col, vectors, k)[0]
        return SearchResult(
            hits=_label(hits, BACKUP, stale),
            store=BACKUP,
            stale_as_of=stale,
            fell_back=not state.failed_over,
            primary_error=error,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _label(hits: list[Hit], store: str, stale: str | None) -> list[Hit]:
    for h in hits:
        h.store, h.stale_as_of = store, stale
    return hits


def search(
    text: str, k: int = 5, settings: Settings | None = None, embedder: Embedder | None = None
) -> list[Hit]:
    """The ``k`` chunks nearest to ``text``, best first; each hit says which store answered (``store``) and,
    from the backup, ``stale_as_of``.

    Args:
        text: the query, in natural language or code.
        k: number of hits.
        settings: default: from the environment (``NOVA_HOME``, ``NOVA_CHROMA_URL``).
        embedder: default: the bundled all-MiniLM-L6-v2, loaded only once the index is known to exist.

    Raises:
        IndexNotBuiltError: nothing has been indexed yet; the message says to run the rebuild job.
        VectorStoreError: the vector store is unreachable and no backup store can answer.
    """
    settings = settings or Settings.from_env(require_source=False)
    searcher = Searcher(settings, embedder)
    try:
        if not read_state(settings.home).failed_over:
            try:  # before loading the model: say early when nothing is built
                col = searcher._primary_collection()
                empty = col.count() == 0
            except IndexNotBuiltError:
                raise
            except NovaError:
                empty = False  # unreachable or damaged: the search falls back to the backup store
            if empty:
                raise IndexNotBuiltError(
                    f"the vector index {col.name} is empty: run the rebuild job "
                    "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild)"
                )
        return searcher.search(text, k).hits
    finally:
        searcher.close()

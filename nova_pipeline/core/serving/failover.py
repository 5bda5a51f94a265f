"""Failing over to the backup store and back: settings, the active store, activation and failback.

The design follows seed 004 (CodeWeaver's vector-store failover), on this project's pieces: the pointer
(:mod:`.pointer`), the backup store made from the CURRENT golden copy (the on-disk runtime copy, or in ``nova
serve`` an in-memory copy when the zone allows: :mod:`.estimate`), the breaker (:mod:`.breaker`), the probe
(:mod:`.probe`) and the journal (:mod:`.journal`). The sensors and jobs in ``defs/serving.py`` only call
this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nova_pipeline.core.errors import FailoverError, SettingsError, VectorStoreError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.serving.estimate import estimate_for_version
from nova_pipeline.core.serving.journal import Journal, JournalingCollection
from nova_pipeline.core.serving.pointer import (
    BACKUP,
    PRIMARY,
    FailoverState,
    now_iso,
    read_state,
    update_state,
)

__all__ = [
    "ActiveStore",
    "FailoverSettings",
    "activate_backup",
    "active_client",
    "active_store",
    "fail_back",
    "writing_to",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailoverSettings:
    """Failover settings, from the environment.

    =================================  ====================================================  =======
    variable                           meaning                                                default
    =================================  ====================================================  =======
    ``NOVA_FAILOVER_PROBE_INTERVAL``   seconds between health probes (sensor interval)        5
    ``NOVA_FAILOVER_THRESHOLD``        consecutive failed probes that open the breaker        3
    ``NOVA_FAILOVER_HALF_OPEN_AFTER``  seconds an open breaker waits before a trial probe     30
    ``NOVA_FAILOVER_RESTORE_DELAY``    seconds the primary must stay healthy before failback  60
    ``NOVA_QUERY_TIMEOUT``             seconds a primary query may take in ``nova serve``     2
    ``NOVA_PROBE_TIMEOUT``             seconds one probe may take                             10
    ``NOVA_BACKUP_MAX_MEMORY_MB``      the most an in-memory backup store may take            2048
    =================================  ====================================================  =======
    """

    probe_interval_s: int = 5
    failure_threshold: int = 3
    half_open_after_s: float = 30.0
    restore_delay_s: float = 60.0
    query_timeout_s: float = 2.0
    probe_timeout_s: float = 10.0
    max_memory_mb: int = 2048

    @classmethod
    def from_env(cls, env=None) -> FailoverSettings:
        env = os.environ if env is None else env
        d = cls()

        def get(name, default, kind):
            raw = env.get(name, "")
            if not raw.strip():
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from None
            if value < 0:
                raise SettingsError(f"{name}={raw!r} must not be negative")
            return value

        return cls(
            probe_interval_s=get("NOVA_FAILOVER_PROBE_INTERVAL", d.probe_interval_s, int),
            failure_threshold=get("NOVA_FAILOVER_THRESHOLD", d.failure_threshold, int),
            half_open_after_s=get("NOVA_FAILOVER_HALF_OPEN_AFTER", d.half_open_after_s, float),
            restore_delay_s=get("NOVA_FAILOVER_RESTORE_DELAY", d.restore_delay_s, float),
            query_timeout_s=get("NOVA_QUERY_TIMEOUT", d.query_timeout_s, float),
            probe_timeout_s=get("NOVA_PROBE_TIMEOUT", d.probe_timeout_s, float),
            max_memory_mb=get("NOVA_BACKUP_MAX_MEMORY_MB", d.max_memory_mb, int),
        )


@dataclass
class ActiveStore:
    """The store the pointer names, for the pipeline: a label, its client (opened on first use, so a step
    that needs no store never imports Chroma), and while failed over, the journal every write goes through."""

    label: str
    state: FailoverState
    home: Path
    chroma_url: str | None = None
    journal: Journal | None = None
    _client: object = None

    @property
    def client(self):
        """The Chroma client of this store, opened fresh by :func:`writing_to` for its block.

        Raises:
            VectorStoreError: the store was not opened through :func:`writing_to` (use :func:`active_client`
                to read).
        """
        if self._client is None:
            raise VectorStoreError(
                f"the {self.label} store is opened by writing_to() (writers) or active_client() (readers)"
            )
        return self._client

    def collection(self, fingerprint: str, create: bool = True):
        from nova_pipeline.core.index.vector_store import get_collection

        col = get_collection(self.client, fingerprint, create=create)
        if self.journal is None:
            return col
        return JournalingCollection(col, self.journal, on_first_write=self._runtime_copy_written)

    def _runtime_copy_written(self) -> None:
        # the runtime copy no longer equals a golden version: the next refresh must diff it for real
        Layout.of(self.home).runtime_version.unlink(missing_ok=True)


def active_store(home, chroma_url: str | None) -> ActiveStore:
    """The pointer's store: the primary, or while failed over, the on-disk backup (the runtime copy),
    journaled. Nothing is opened until its ``client`` is used."""
    state = read_state(home)
    if not state.failed_over:
        return ActiveStore(label=PRIMARY, state=state, home=Path(home), chroma_url=chroma_url)
    return ActiveStore(
        label=BACKUP, state=state, home=Path(home), chroma_url=chroma_url, journal=Journal(home)
    )


@contextlib.contextmanager
def writing_to(home, chroma_url: str | None, buckets: Sequence[int] | None = None) -> Iterator[ActiveStore]:
    """Hold the lock a writer of the active store needs, and yield that store, read from the pointer *after*
    the lock was taken.

    The lock is the writer lock (:func:`~nova_pipeline.core.locks.writer_lock`) for an embedded store (the
    primary data dir, or the runtime copy while failed over) and for a whole-store writer; the locks of
    ``buckets`` for a slice of a run against a Chroma server. A failover or failback flips the pointer under
    the writer lock, which takes every bucket lock, so the store yielded here stays the active one until the
    block ends. When the pointer changed while this writer waited, it lets go and takes the lock the new store
    needs.

    Raises:
        LockTimeoutError: another writer held the lock too long.
    """
    from nova_pipeline.core.locks import bucket_locks, writer_lock

    while True:
        store = active_store(home, chroma_url)
        server_slice = bool(chroma_url) and store.label == PRIMARY and buckets is not None
        lock = bucket_locks(home, buckets) if server_slice else writer_lock(home)
        with lock:
            now = active_store(home, chroma_url)
            if now.label == store.label:
                with _fresh_client_of(now) as client:
                    now._client = client
                    yield now
                return
        log.info(
            "the active store changed to %s while waiting for its lock: taking the lock it needs", now.label
        )


@contextlib.contextmanager
def active_client(home, chroma_url: str | None) -> Iterator[object]:
    """A fresh client of the store the pointer names now (the primary, or the runtime copy while failed over),
    closed after the block; for a reader under the writer lock, such as the golden copy's export."""
    with _fresh_client_of(active_store(home, chroma_url)) as client:
        yield client


def _fresh_client_of(store: ActiveStore):
    from nova_pipeline.core.index.vector_store import fresh_client

    if store.label == BACKUP:
        return fresh_client(store.home, None, path=Layout.of(store.home).runtime_vectors)
    return fresh_client(store.home, store.chroma_url)


def activate_backup(
    home, settings: FailoverSettings, reason: str, who: str, available_bytes: int | None = None
) -> dict:
    """Fail over: estimate the backup's resources, bring the on-disk backup (the runtime copy) to CURRENT,
    flip the pointer to ``backup`` atomically, and audit it. A no-op when already failed over.

    Returns:
        The audit record (``details``: golden version, the estimate, the runtime copy's diff).

    Raises:
        FailoverError: there is no golden copy to fail over to, or the backup cannot be made (the message
            is the estimate's refusal).
    """
    from nova_pipeline.core.locks import writer_lock
    from nova_pipeline.core.protect import audit, golden

    with writer_lock(home):  # the runtime copy is written and the pointer flipped with no writer in between
        return _activate_locked(home, settings, reason, who, available_bytes, audit, golden)


def _activate_locked(home, settings, reason, who, available_bytes, audit, golden) -> dict:
    state = read_state(home)
    if state.failed_over:
        return audit.record(home, "failover", "already on the backup store", who, since=state.since)
    cur = golden.current_version(home)
    if cur is None:
        audit.record(home, "failover", "refused: no golden copy", who, reason=reason)
        raise FailoverError(
            "no golden copy to fail over to: the backup store is made from CURRENT; run the "
            "rebuild job while the primary is up"
        )
    try:
        applied = golden.make_runtime_copy(home)
        disk_copy = True
    except Exception as exc:  # noqa: BLE001 - any failure to build it means: no on-disk backup
        log.error("the on-disk backup store cannot be made: %s", exc)
        applied, disk_copy = None, False
    est = estimate_for_version(cur, available_bytes, settings.max_memory_mb, disk_copy)
    if est.choice == "refuse" or applied is None:
        audit.record(
            home, "failover", "refused", who, reason=reason, estimate=est.as_metadata(), message=est.message
        )
        raise FailoverError(
            est.message
            if est.choice == "refuse"
            else "the on-disk backup store (NOVA_HOME/runtime/vectors) cannot be made from CURRENT; "
            "the pipeline needs it to keep writing while failed over"
        )
    log.warning("PRIMARY VECTOR STORE UNAVAILABLE - activating the backup store (%s)", reason)
    log.info(est.message)

    def flip(state: FailoverState) -> None:
        state.active, state.since, state.reason = BACKUP, now_iso(), reason
        state.backup_version, state.backup_created_at, state.backup_kind = (
            cur.name,
            cur.created_at,
            est.choice,
        )

    update_state(home, flip)
    log.warning(
        "BACKUP MODE ACTIVE - searches are answered from golden version %s (stale as of %s)",
        cur.name,
        cur.created_at,
    )
    return audit.record(
        home,
        "failover",
        "ok",
        who,
        reason=reason,
        golden_version=cur.name,
        stale_as_of=cur.created_at,
        estimate=est.as_metadata(),
        runtime_copy={"upserted": applied.upserted, "deleted": applied.deleted},
    )


class _CacheOnlyEmbedder:
    """An embedder that never embeds: failback repairs the primary from the embedding cache alone."""

    def __init__(self, fingerprint: str, dimension: int = 384):
        self.fingerprint, self.dimension, self.max_seq_length = fingerprint, dimension, 256

    def embed(self, texts):
        raise FailoverError(
            f"{len(texts)} texts are missing from the embedding cache; failback does not "
            "re-embed: run the rebuild job"
        )


def fail_back(
    home,
    chroma_url: str | None,
    fingerprint: str,
    chunks: pd.DataFrame | Callable[[], pd.DataFrame],
    who: str,
    sample: int = 25,
) -> dict:
    """Fail back: bring the primary up to date without re-indexing, check it, flip the pointer, audit.

    1. A primary that came back empty (a new server) is refilled from CURRENT's export.
    2. The journal is replayed into it, in order.
    3. Its ids must equal the chunks' and a sample of chunks must find themselves (self-retrieval, with
       the cached vectors). Anything still missing (e.g. written before the failover but not yet in a golden
       version) is upserted from the embedding cache; nothing is embedded again.
    4. The pointer flips back to ``primary`` and the journal is cleared.

    All four run under the writer lock, so no writer can add to the journal between the replay and the
    flip: a writer that was waiting re-reads the pointer once it has the lock (:func:`writing_to`) and
    writes to the primary. ``chunks`` (the ``source_chunks`` table, or a function returning it) is read
    under the lock too.

    Returns:
        The audit record.

    Raises:
        FailoverError: not failed over, or the primary does not check out (the pointer stays on the backup).
    """
    from nova_pipeline.core.index.vector_store import fresh_client
    from nova_pipeline.core.locks import writer_lock
    from nova_pipeline.core.protect import audit

    started = time.perf_counter()
    journal = Journal(home)
    with writer_lock(home):
        if not read_state(home).failed_over:
            return audit.record(home, "failback", "already on the primary store", who)
        with fresh_client(home, chroma_url) as client:
            return _fail_back_locked(home, client, fingerprint, chunks, who, sample, journal, started)


def _fail_back_locked(home, client, fingerprint, chunks, who, sample, journal, started) -> dict:
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.index.reconcile import reconcile
    from nova_pipeline.core.index.vector_store import existing_ids, get_collection
    from nova_pipeline.core.index.verification import VerifiedRecord, self_retrieval_failures
    from nova_pipeline.core.protect import audit, golden

    pending = journal.summary()
    chunks = chunks() if callable(chunks) else chunks
    col = get_collection(client, fingerprint)
    refilled = 0
    cur = golden.current_version(home)
    if col.count() == 0 and cur is not None:
        refilled, _ = golden.import_export(col, cur.path)
    upserted, deleted = journal.replay(col)
    cache = EmbeddingCache(home, fingerprint)
    try:
        repaired = 0
        if existing_ids(col) != set(chunks["chunk_id"]):
            stats = reconcile(col, chunks, _CacheOnlyEmbedder(fingerprint), cache)
            repaired = stats.upserted + stats.deleted
        checked, failures = self_retrieval_failures(col, chunks, cache, sample)
    finally:
        cache.close()
    count = col.count()
    if count != len(chunks) or failures:
        problem = failures[0] if failures else f"{count} vectors for {len(chunks)} chunks"
        audit.record(home, "failback", f"failed: {problem}", who, journal=pending)
        raise FailoverError(
            f"the primary does not check out after the replay ({problem}); staying on the backup store"
        )

    def flip(state: FailoverState) -> None:
        state.active, state.since, state.reason, state.breaker = (
            PRIMARY,
            now_iso(),
            "primary recovered",
            "closed",
        )

    update_state(home, flip)
    journal.clear()  # under the same lock as the replay: nothing was journaled in between
    VerifiedRecord(home).forget()
    log.info(
        "PRIMARY VECTOR STORE RESTORED - backup mode deactivated in %.1f s", time.perf_counter() - started
    )
    return audit.record(
        home,
        "failback",
        "ok",
        who,
        refilled_from_golden=refilled,
        journal=pending,
        replayed_upserts=upserted,
        replayed_deletes=deleted,
        repaired_from_cache=repaired,
        vectors=count,
        self_retrieval_checked=checked,
    )

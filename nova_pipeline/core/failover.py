"""Failover of the vector store: the active-store pointer, the circuit breaker, the health probe, resource
zones, the backup store and the write journal. Plain Python; the sensors and jobs in ``defs/serving.py``
only call this.

The design follows seed 004 (CodeWeaver's vector-store failover), on this project's pieces:

* **The pointer.** ``NOVA_HOME/failover/state.json`` (atomic writes) says which store answers searches and
  takes writes: ``primary`` (the Chroma server at ``NOVA_CHROMA_URL``, or the embedded ``NOVA_HOME/vectors``)
  or ``backup``, with the breaker's state, since when and why. Every reader (``nova_pipeline.search``,
  ``nova search``, ``nova serve``, the pipeline) reads it.
* **The backup store** is made from the CURRENT golden copy: the on-disk runtime copy
  (``NOVA_HOME/runtime/vectors``, a Chroma data dir kept equal to CURRENT by diff), or in ``nova serve``, an
  in-memory Chroma loaded from CURRENT's export when the resource zone allows it.
* **The breaker** is pybreaker's, with its state in a plain dict so that a Dagster sensor keeps it in its
  cursor between ticks (:mod:`nova_pipeline.core.breaker`, apart so that importing this module does not
  import pybreaker, which imports redis: 0.1 s in every run process). Defaults: 3 consecutive failed probes
  open it, half-open after 30 s, one good probe closes it.
* **Resource zones** (seed 004): green under 100,000 chunks, yellow to 500,000, red above. The memory a
  backup needs is estimated from the real collection's cost per chunk (the golden export's uncompressed
  bytes over its vectors, times :data:`CHROMA_MEMORY_FACTOR`, plus :data:`CHROMA_FIXED_BYTES`), with the
  seed's safety buffer: 2x the estimate + 500 MB must be available. Red, or not enough memory, or over
  ``max_memory_mb``: the on-disk runtime copy. Where that cannot be had either: a refusal that says why.
* **The journal.** While failed over, every upsert and delete of the pipeline goes to the backup store and,
  first, to ``NOVA_HOME/failover/journal/`` (one fsynced Parquet file per batch, numbered). Failback
  replays it into the primary (idempotent: ids are derived from content), so nothing is re-indexed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import FailoverError
from nova_pipeline.core.layout import Layout

log = logging.getLogger(__name__)

PRIMARY, BACKUP = "primary", "backup"
MEMORY, DISK = "memory", "disk"
GREEN, YELLOW, RED = "green", "yellow", "red"
GREEN_MAX_CHUNKS, YELLOW_MAX_CHUNKS = 100_000, 500_000  # seed 004's zones
SEED_BYTES_PER_CHUNK = 5 * 1024  # seed 004's guess, kept only for comparison
BUFFER_BYTES = 500 * 2**20  # seed 004: "2x estimated + 500MB"
# An in-memory Chroma store holds each vector several times (the embeddings queue, the HNSW graph) and each
# document twice (the row and the trigram full-text index): its memory grows by about 3x the export's
# uncompressed bytes per chunk, on top of about 32 MB for the store itself. Both measured by
# benchmarks/bench_failover.py (RSS of loading half, then all, of a golden export; chromadb 1.5), which
# prints them again on every run.
CHROMA_MEMORY_FACTOR = 3.0
CHROMA_FIXED_BYTES = 32 * 2**20


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---- settings ----------------------------------------------------------------------------------------------

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
            return kind(raw) if raw.strip() else default

        return cls(
            probe_interval_s=get("NOVA_FAILOVER_PROBE_INTERVAL", d.probe_interval_s, int),
            failure_threshold=get("NOVA_FAILOVER_THRESHOLD", d.failure_threshold, int),
            half_open_after_s=get("NOVA_FAILOVER_HALF_OPEN_AFTER", d.half_open_after_s, float),
            restore_delay_s=get("NOVA_FAILOVER_RESTORE_DELAY", d.restore_delay_s, float),
            query_timeout_s=get("NOVA_QUERY_TIMEOUT", d.query_timeout_s, float),
            probe_timeout_s=get("NOVA_PROBE_TIMEOUT", d.probe_timeout_s, float),
            max_memory_mb=get("NOVA_BACKUP_MAX_MEMORY_MB", d.max_memory_mb, int),
        )


# ---- the pointer -------------------------------------------------------------------------------------------

@dataclass
class FailoverState:
    """``NOVA_HOME/failover/state.json``.

    Attributes:
        active: ``primary`` or ``backup``: the store that answers searches and takes writes.
        breaker: the health sensor's breaker: ``closed``, ``open`` or ``half-open``.
        since: when ``active`` last changed (UTC ISO 8601).
        reason: why it changed.
        backup_version, backup_created_at: the golden version the backup store holds, and when it was made
            (searches answered by the backup are "stale as of" that time).
        backup_kind: ``memory`` or ``disk``, as the resource estimate chose at failover.
        updated_at: the last write of this record.
    """

    active: str = PRIMARY
    breaker: str = "closed"
    since: str = ""
    reason: str = "initial state"
    backup_version: str | None = None
    backup_created_at: str | None = None
    backup_kind: str | None = None
    updated_at: str = ""

    @property
    def failed_over(self) -> bool:
        return self.active == BACKUP


def state_path(home) -> Path:
    return Layout.of(home).failover / "state.json"


def read_state(home) -> FailoverState:
    """The pointer; ``primary`` with a closed breaker when it was never written."""
    try:
        raw = json.loads(state_path(home).read_text())
    except FileNotFoundError:
        return FailoverState()
    except ValueError as exc:
        raise FailoverError(f"{state_path(home)} is not valid JSON ({exc}); fix or delete it") from exc
    known = {f for f in FailoverState.__dataclass_fields__}
    return FailoverState(**{k: v for k, v in raw.items() if k in known})


def write_state(home, state: FailoverState) -> FailoverState:
    """Write the pointer atomically (temp file, fsync, rename) and return it."""
    state.updated_at = _now_iso()
    atomic_write_bytes(state_path(home), json.dumps(asdict(state), indent=1).encode())
    return state


def set_breaker(home, breaker: str) -> FailoverState:
    """Record the breaker's state in the pointer (only when it changed)."""
    state = read_state(home)
    if state.breaker != breaker:
        state.breaker = breaker
        write_state(home, state)
    return state


# ---- the probe ---------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One health probe of the primary: ``ok``, seconds it took, the count it read, or the error."""

    ok: bool
    seconds: float
    count: int | None = None
    error: str = ""


def probe_in_process(home: Path, chroma_url: str | None, fingerprint: str, timeout: float = 5.0) -> dict:
    """Heartbeat (server mode), count and one query of the primary collection, in this process.

    A server is probed through Chroma's HTTP API (``/api/v2``: heartbeat, the collection by name, count, one
    ``get`` and one ``query``) with ``httpx``, each request bounded by ``timeout`` seconds, so the probe
    does not pay for importing the Chroma client; an embedded data dir is opened with the Chroma client.

    Raises:
        Any error of the vector store (an HTTP status, a transport error, a Chroma error).
    """
    from nova_pipeline.core.vector_store import collection_name, get_collection, open_client

    if chroma_url:
        import httpx

        base = (chroma_url if "://" in chroma_url else f"http://{chroma_url}").rstrip("/") + "/api/v2"
        db = f"{base}/tenants/default_tenant/databases/default_database/collections"
        with httpx.Client(timeout=timeout) as http:
            http.get(f"{base}/heartbeat").raise_for_status()
            got = http.get(f"{db}/{collection_name(fingerprint)}")
            got.raise_for_status()
            cid = got.json()["id"]
            count = int(http.get(f"{db}/{cid}/count").raise_for_status().json())
            if count:
                one = http.post(
                    f"{db}/{cid}/get", json={"limit": 1, "include": ["embeddings"]}
                ).raise_for_status()
                http.post(
                    f"{db}/{cid}/query",
                    json={"query_embeddings": one.json()["embeddings"], "n_results": 1, "include": []},
                ).raise_for_status()
        return {"count": count}
    col = get_collection(open_client(home, chroma_url), fingerprint, create=False)
    count = col.count()
    if count:
        got = col.get(limit=1, include=["embeddings"])
        col.query(query_embeddings=np.asarray(got["embeddings"], dtype=np.float32), n_results=1)
    return {"count": count}


def probe(home: Path, chroma_url: str | None, fingerprint: str, timeout: float = 10.0) -> Probe:
    """:func:`probe_in_process` in a subprocess, bounded by ``timeout`` seconds: a hang is a failure, and a
    crash of the vector library (a segfault, chroma#7238) is a failed probe, not a crashed caller."""
    started = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "nova_pipeline.core.failover",
        "probe",
        str(home),
        chroma_url or "",
        fingerprint,
    ]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    except subprocess.TimeoutExpired:
        return Probe(False, time.perf_counter() - started, error=f"the probe took more than {timeout:.0f} s")
    took = time.perf_counter() - started
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        return Probe(False, took, error=f"probe exit {proc.returncode}: {tail[-400:]}")
    try:
        return Probe(True, took, count=json.loads(proc.stdout.strip().splitlines()[-1])["count"])
    except (ValueError, KeyError, IndexError) as exc:
        return Probe(False, took, error=f"probe printed nothing usable ({exc})")


# ---- resource estimation -----------------------------------------------------------------------------------


@dataclass
class Estimate:
    """What a backup store of ``chunks`` vectors needs, and where it can live. Bytes are bytes."""

    chunks: int
    bytes_per_chunk: float
    estimate_bytes: int
    required_bytes: int
    available_bytes: int
    max_memory_bytes: int
    zone: str
    choice: str  # memory, disk or refuse
    message: str

    def as_metadata(self) -> dict:
        return {
            "zone": self.zone,
            "chunks": self.chunks,
            "bytes_per_chunk": round(self.bytes_per_chunk),
            "estimate_mb": round(self.estimate_bytes / 2**20, 1),
            "required_mb": round(self.required_bytes / 2**20, 1),
            "available_mb": round(self.available_bytes / 2**20, 1),
            "choice": self.choice,
        }


def zone_of(chunks: int) -> str:
    """Seed 004's zones: green below 100,000 chunks, yellow to 500,000, red above."""
    return GREEN if chunks < GREEN_MAX_CHUNKS else YELLOW if chunks <= YELLOW_MAX_CHUNKS else RED


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f}GB"


def estimate(
    chunks: int,
    export_bytes: int,
    available_bytes: int | None = None,
    max_memory_mb: int = 2048,
    disk_copy: bool = True,
) -> Estimate:
    """Where a backup store of ``chunks`` vectors can live.

    Args:
        chunks: vectors in the store.
        export_bytes: the golden export's uncompressed size (vectors, documents, metadata); the cost per
            chunk is ``export_bytes / chunks * CHROMA_MEMORY_FACTOR``, and the estimate adds
            ``CHROMA_FIXED_BYTES``.
        available_bytes: free memory (default: psutil's ``virtual_memory().available``).
        max_memory_mb: the cap on an in-memory backup.
        disk_copy: whether the on-disk runtime copy can serve (it exists or can be built).

    Returns:
        ``choice`` is ``memory`` (green or yellow zone, 2x the estimate + 500 MB available, estimate under
        the cap), else ``disk`` when ``disk_copy``, else ``refuse`` with seed 004's message.
    """
    import psutil

    if available_bytes is None:
        available_bytes = psutil.virtual_memory().available
    per_chunk = export_bytes / chunks * CHROMA_MEMORY_FACTOR if chunks else 0.0
    est = int(per_chunk * chunks) + CHROMA_FIXED_BYTES
    required = 2 * est + BUFFER_BYTES
    cap = max_memory_mb * 2**20
    zone = zone_of(chunks)
    fits = zone != RED and required <= available_bytes and est <= cap
    if fits:
        choice, message = (
            MEMORY,
            (
                f"Backup memory estimate: {_gb(est)} ({chunks:,} chunks), available: "
                f"{_gb(available_bytes)}, zone: {zone}"
            ),
        )
    elif disk_copy:
        why = (
            "red zone"
            if zone == RED
            else f"over max_memory_mb={max_memory_mb}"
            if est > cap
            else f"needs {_gb(required)}, {_gb(available_bytes)} available"
        )
        choice, message = (
            DISK,
            f"Backup from the on-disk runtime copy ({why}; zone: {zone}, {chunks:,} chunks)",
        )
    else:
        choice = "refuse"
        message = (
            f"BACKUP ACTIVATION FAILED - Insufficient memory. Required: {_gb(required)}, Available: "
            f"{_gb(available_bytes)}. No on-disk runtime copy either. To enable backup mode: free memory "
            f"(need {_gb(required)}, have {_gb(available_bytes)}); run the rebuild job so that golden_copy "
            f"makes the runtime copy; index a subset of the tree; or raise NOVA_BACKUP_MAX_MEMORY_MB "
            f"(now {max_memory_mb})."
        )
    return Estimate(
        chunks=chunks,
        bytes_per_chunk=per_chunk,
        estimate_bytes=est,
        required_bytes=required,
        available_bytes=available_bytes,
        max_memory_bytes=cap,
        zone=zone,
        choice=choice,
        message=message,
    )


def estimate_for_version(
    version, available_bytes: int | None = None, max_memory_mb: int = 2048, disk_copy: bool = True
) -> Estimate:
    """:func:`estimate` for a golden version: its vector count and its export's uncompressed bytes (from the
    Parquet footers, without reading the data)."""
    import pyarrow.parquet as pq

    from nova_pipeline.core.golden import export_files

    export_bytes = 0
    for f in export_files(version.path):
        meta = pq.ParquetFile(f).metadata
        export_bytes += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return estimate(version.count, export_bytes, available_bytes, max_memory_mb, disk_copy)


# ---- the journal -------------------------------------------------------------------------------------------


class Journal:
    """The write journal of a failover: ``NOVA_HOME/failover/journal/<seq>-<upsert|delete>.parquet``.

    Each entry is written (and fsynced) before the write it records reaches the backup store, so the journal
    never misses a change that the backup store has. Replaying an entry twice does no harm: ids are derived
    from content, an upsert of the same id writes the same row, a delete of a missing id does nothing.
    """

    def __init__(self, home):
        self.dir = Layout.of(home).failover / "journal"

    def _next(self) -> int:
        seqs = [int(p.name.split("-", 1)[0]) for p in self.dir.glob("*.parquet")] if self.dir.exists() else []
        return max(seqs, default=0) + 1

    def _write(self, op: str, table: pa.Table) -> Path:
        from nova_pipeline.core.golden import table_bytes

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self._next():08d}-{op}.parquet"
        atomic_write_bytes(path, table_bytes(table))
        return path

    def upsert(self, ids, embeddings, documents, metadatas) -> None:
        mat = np.asarray(embeddings, dtype=np.float32)
        self._write(
            "upsert",
            pa.table(
                {
                    "id": pa.array(list(ids), pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(mat.ravel(), pa.float32()), mat.shape[1]
                    ),
                    "document": pa.array(list(documents), pa.string()),
                    "metadata": pa.array([json.dumps(m, sort_keys=True) for m in metadatas], pa.string()),
                }
            ),
        )

    def delete(self, ids) -> None:
        self._write("delete", pa.table({"id": pa.array(list(ids), pa.string())}))

    def entries(self) -> Iterator[tuple[int, str, pa.Table]]:
        """``(seq, op, table)`` in order."""
        from nova_pipeline.core.golden import read_shard

        if not self.dir.exists():
            return
        for p in sorted(self.dir.glob("*.parquet")):
            seq, op = p.stem.split("-", 1)
            yield int(seq), op, read_shard(p)

    def summary(self) -> dict:
        """``{"upserts": ids upserted, "deletes": ids deleted, "entries": files}`` (ids counted with
        repeats)."""
        out = {"upserts": 0, "deletes": 0, "entries": 0}
        for _, op, t in self.entries():
            out["upserts" if op == "upsert" else "deletes"] += t.num_rows
            out["entries"] += 1
        return out

    def replay(self, collection, batch: int = 1000) -> tuple[int, int]:
        """Apply every entry, in order, to ``collection``; returns ``(upserted, deleted)`` ids."""
        from nova_pipeline.core.golden import embedding_matrix

        upserted = deleted = 0
        for _, op, t in self.entries():
            for start in range(0, t.num_rows, batch):
                part = t.slice(start, batch)
                ids = part.column("id").to_pylist()
                if op == "upsert":
                    collection.upsert(
                        ids=ids,
                        embeddings=embedding_matrix(part),
                        documents=part.column("document").to_pylist(),
                        metadatas=[json.loads(m) for m in part.column("metadata").to_pylist()],
                    )
                    upserted += len(ids)
                else:
                    collection.delete(ids=ids)
                    deleted += len(ids)
        return upserted, deleted

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class JournalingCollection:
    """A Chroma collection whose writes are journaled first (write-ahead); reads pass through."""

    def __init__(self, collection, journal: Journal, on_first_write=None):
        self._collection = collection
        self._journal = journal
        self._on_first_write = on_first_write

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def _first_write(self) -> None:
        if self._on_first_write is not None:
            self._on_first_write()
            self._on_first_write = None

    def upsert(self, ids, embeddings, documents, metadatas):
        self._first_write()
        self._journal.upsert(ids, embeddings, documents, metadatas)
        return self._collection.upsert(
            ids=ids, embeddings=embeddings, documents=documents, metadatas=metadatas
        )

    def delete(self, ids):
        self._first_write()
        self._journal.delete(ids)
        return self._collection.delete(ids=ids)


# ---- the active store --------------------------------------------------------------------------------------


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
        """The Chroma client of this store.

        Raises:
            VectorStoreError: the store cannot be opened.
        """
        from nova_pipeline.core.vector_store import open_client, open_client_at

        if self._client is None:
            self._client = (
                open_client_at(Layout.of(self.home).runtime_vectors)
                if self.label == BACKUP
                else open_client(self.home, self.chroma_url)
            )
        return self._client

    def collection(self, fingerprint: str, create: bool = True):
        from nova_pipeline.core.vector_store import get_collection

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


# ---- failover and failback --------------------------------------------------------------------------------


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
    from nova_pipeline.core import audit, golden

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
    state.active, state.since, state.reason = BACKUP, _now_iso(), reason
    state.backup_version, state.backup_created_at, state.backup_kind = cur.name, cur.created_at, est.choice
    write_state(home, state)
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


def fail_back(home, chroma_url: str | None, fingerprint: str, chunks, who: str, sample: int = 25) -> dict:
    """Fail back: bring the primary up to date without re-indexing, check it, flip the pointer, audit.

    1. A primary that came back empty (a new server) is refilled from CURRENT's export.
    2. The journal is replayed into it, in order.
    3. Its ids must equal the chunks' and a sample of chunks must find themselves (self-retrieval, with
       the cached vectors). Anything still missing (e.g. written before the failover but not yet in a golden
       version) is upserted from the embedding cache; nothing is embedded again.
    4. The pointer flips back to ``primary`` and the journal is cleared.

    Returns:
        The audit record.

    Raises:
        FailoverError: not failed over, or the primary does not check out (the pointer stays on the backup).
    """
    from nova_pipeline.core import audit, golden
    from nova_pipeline.core.embedding import EmbeddingCache
    from nova_pipeline.core.vector_store import (
        VerifiedRecord,
        existing_ids,
        get_collection,
        open_client,
        reconcile,
        self_retrieval_failures,
        writer_lock,
    )

    state = read_state(home)
    if not state.failed_over:
        return audit.record(home, "failback", "already on the primary store", who)
    started = time.perf_counter()
    journal = Journal(home)
    pending = journal.summary()
    with writer_lock(home):
        col = get_collection(open_client(home, chroma_url), fingerprint)
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
    state.active, state.since, state.reason, state.breaker = (
        PRIMARY,
        _now_iso(),
        "primary recovered",
        "closed",
    )
    write_state(home, state)
    journal.clear()
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


def _main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "probe":
        print(json.dumps(probe_in_process(Path(argv[1]), argv[2] or None, argv[3])))
        return 0
    print("usage: python -m nova_pipeline.core.failover probe HOME CHROMA_URL FINGERPRINT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

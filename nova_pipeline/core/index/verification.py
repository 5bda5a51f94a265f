"""Verifying a collection against the chunks, and remembering what was verified.

:func:`count_failures` and :func:`self_retrieval_failures` are the two checks of ``vector_index``;
:class:`VerifiedRecord` and :func:`store_state` let an unchanged rebuild skip Chroma entirely when nothing
wrote to the embedded collection since both checks passed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import blake3
import numpy as np
import pandas as pd

from nova_pipeline.core.index.embedding_cache import EmbeddingCache
from nova_pipeline.core.index.vector_query import query
from nova_pipeline.core.index.vector_store import collection_name, existing_ids
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.tables import in_set

__all__ = [
    "MIN_FOUND_FIRST",
    "WIDE_SEARCH",
    "embedded_ids",
    "VerifiedRecord",
    "count_failures",
    "ids_digest",
    "self_retrieval_failures",
    "store_state",
]


def ids_digest(chunk_ids, fingerprint: str) -> str:
    """blake3 of a model fingerprint and a set of chunk ids: what a collection should hold.

    Over the sorted 64-bit row hashes of the ids (pandas' ``hash_pandas_object``, as
    :func:`~nova_pipeline.core.index.lexical.chunks_digest`), not the sorted ids themselves: 0.74 s for
    342,997 ids as sorted and joined strings, a vectorised pass instead."""
    ids = chunk_ids if isinstance(chunk_ids, pd.Series) else pd.Series(list(chunk_ids), dtype=object)
    rows = pd.util.hash_pandas_object(ids, index=False).to_numpy()
    h = blake3.blake3(f"ids/1\n{fingerprint}\n".encode())
    h.update(np.sort(rows).tobytes())
    return h.hexdigest()


def store_state(home: Path, fingerprint: str) -> str | None:
    """A fingerprint of the embedded collection's state, read without importing Chroma; None if unknown.

    It covers the collection's id, the ids and write sequence numbers of its segments (Chroma's own
    ``max_seq_id``: every upsert and delete raises it, reads do not), and the sizes of the segments' index
    files. Not their mtimes: every embedded client rewrites some of them when it opens the data dir (measured
    with chromadb 1.5: ``length.bin`` and ``chroma.sqlite3`` change at each open, same sizes, same sequence
    numbers), so a mere reader would look like a writer. Reads (open, count, get, query) leave it unchanged;
    any write changes it. It reads Chroma's SQLite catalogue read-only; anything unexpected (server mode, no
    store, another schema) gives None, which callers treat as "unknown: verify for real".
    """
    data_dir = Layout.of(home).vectors
    db_path = data_dir / "chroma.sqlite3"
    if not db_path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute(
                "SELECT c.id, s.id, s.scope, m.seq_id FROM collections c "
                "JOIN segments s ON s.collection = c.id "
                "LEFT JOIN max_seq_id m ON m.segment_id = s.id WHERE c.name = ? ORDER BY s.id",
                (collection_name(fingerprint),),
            ).fetchall()
        finally:
            db.close()
        if not rows:
            return None
        files = []
        for _, segment, _, _ in rows:
            seg_dir = data_dir / segment
            if seg_dir.is_dir():
                files += [(f.name, f.stat().st_size) for f in sorted(seg_dir.iterdir()) if f.is_file()]
    except (sqlite3.Error, OSError):
        return None
    return blake3.blake3(json.dumps([rows, files]).encode()).hexdigest()


def embedded_ids(home: Path, fingerprint: str) -> set[str] | None:
    """The ids the embedded collection of ``fingerprint`` holds, read from Chroma's SQLite catalogue
    read-only (its metadata segment's ``embeddings`` table), without opening Chroma, which would write to
    the data dir. None when there is no embedded store or the catalogue is not as expected (then open it
    for real)."""
    db_path = Layout.of(home).vectors / "chroma.sqlite3"
    if not db_path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            if not db.execute(
                "SELECT 1 FROM collections WHERE name = ?", (collection_name(fingerprint),)
            ).fetchone():
                return None
            rows = db.execute(
                "SELECT e.embedding_id FROM embeddings e JOIN segments s ON e.segment_id = s.id "
                "JOIN collections c ON s.collection = c.id WHERE c.name = ? AND s.scope = 'METADATA'",
                (collection_name(fingerprint),),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return {r[0] for r in rows}


class VerifiedRecord:
    """``NOVA_HOME/vectors.verified.json``: which verifications of the embedded collection passed, at which
    (chunk ids digest, :func:`store_state`), in which run.

    ``vector_index`` and its checks skip Chroma entirely when all three records match the current digest
    and state (nothing was written to the collection since it was fully verified, and the chunks are the
    same), unless the records are older than ``max_age_hours``. This is the scan's rule (re-hash only what
    changed) applied to verification; a failed check writes no record, so the next run verifies for real.
    """

    NAMES = ("reconcile", "vector_count_matches_chunks", "chunks_find_themselves")
    MAX_AGE_HOURS = 168.0

    def __init__(self, home: Path):
        self.path = Layout.of(home).verified_record

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def matching(
        self, name: str, digest: str, state: str | None, max_age_hours: float | None = None
    ) -> dict | None:
        """The record of ``name`` if it was made at this digest and state and is fresh enough, else None."""
        if state is None:
            return None
        rec = self.read().get(name)
        max_age = self.MAX_AGE_HOURS if max_age_hours is None else max_age_hours
        if not rec or rec.get("digest") != digest or rec.get("state") != state:
            return None
        if time.time() - float(rec.get("at", 0)) > max_age * 3600:
            return None
        return rec

    def all_match(self, digest: str, state: str | None) -> bool:
        return all(self.matching(n, digest, state) for n in self.NAMES)

    def record(self, name: str, digest: str, state: str | None, run_id: str = "", **details) -> None:
        """Record that ``name`` passed at (digest, state); a None state (unknown) records nothing."""
        from nova_pipeline.core.atomic import atomic_write_bytes

        if state is None:
            return
        records = self.read()
        records[name] = {"digest": digest, "state": state, "run_id": run_id, "at": time.time(), **details}
        atomic_write_bytes(self.path, json.dumps(records, indent=1).encode())

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
        self.ids_path.unlink(missing_ok=True)

    @property
    def ids_path(self) -> Path:
        return self.path.with_name(Layout.of(self.path.parent).verified_ids.name)

    def record_ids(self, chunk_ids, state: str | None) -> None:
        """Record that the collection holds exactly ``chunk_ids`` at ``state`` (a reconcile just made it so,
        and its count agrees). A None state records nothing."""
        import pyarrow as pa

        from nova_pipeline.core.atomic import atomic_write_with

        if state is None:
            return
        ids = chunk_ids.array if isinstance(chunk_ids, pd.Series) else list(chunk_ids)  # Arrow stays Arrow
        table = pa.table({"chunk_id": pa.array(ids, pa.string())})
        table = table.replace_schema_metadata({"state": state, "count": str(table.num_rows)})

        def write(fh) -> None:
            with pa.ipc.new_file(fh, table.schema) as w:
                w.write_table(table)

        atomic_write_with(self.ids_path, write)

    def count_at(self, state: str | None) -> int | None:
        """How many ids were recorded at ``state`` (read from the file's schema alone), or None as
        :meth:`ids_at`."""
        reader = self._recorded_at(state)
        meta = (reader.schema.metadata or {}) if reader is not None else {}
        return int(meta[b"count"]) if b"count" in meta else None

    def ids_at(self, state: str | None) -> set[str] | None:
        """The ids recorded at ``state`` (:meth:`record_ids`), or None when the collection's state is
        another (any write since changes it), unknown, or nothing was recorded. Reading them costs about
        0.1 s at 100,000 ids where listing the collection through Chroma took 1.2 s (its pages are read with
        ``OFFSET``, so the listing grows faster than the collection)."""
        reader = self._recorded_at(state)
        return None if reader is None else set(reader.read_all().column("chunk_id").to_pylist())

    def _recorded_at(self, state: str | None):
        """An Arrow IPC reader of the recorded ids when they were recorded at ``state``, else None."""
        import pyarrow as pa

        if state is None:
            return None
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(self.ids_path)))
        except (OSError, pa.ArrowException):
            return None
        return reader if (reader.schema.metadata or {}).get(b"state", b"").decode() == state else None


def count_failures(collection, chunks: pd.DataFrame, limit: int = 3) -> tuple[int, int, int, list[str]]:
    """Compare the collection's count with the wanted chunks' (equal counts pass); when they differ, name
    what differs by id.

    Returns:
        ``(count, missing, extra, named)``: the collection's count, how many chunks have no vector, how many
        vectors are no chunk's, and up to ``limit`` of each named (``path:start-end (chunk_id) has no
        vector``; ``vector <id> is no chunk's``). The collection's ids are listed only when the counts differ.
    """
    count = collection.count()
    if count == len(chunks):
        return count, 0, 0, []
    have = existing_ids(collection)
    missing = chunks[~in_set(chunks["chunk_id"], have)]
    extra = sorted(have - set(chunks["chunk_id"]))
    named = [
        f"{r.path}:{r.start_line}-{r.end_line} ({r.chunk_id}) has no vector"
        for r in missing.head(limit).itertuples()
    ]
    named += [f"vector {i} is no chunk's" for i in extra[:limit]]
    return count, len(missing), len(extra), named


MIN_FOUND_FIRST = 0.5  # the share of sampled chunks that must come back first (HNSW is approximate)
WIDE_SEARCH = 1000  # results asked for a sampled chunk that did not come back first (a wider HNSW search)


def self_retrieval_failures(
    collection, chunks: pd.DataFrame, cache: EmbeddingCache, sample: int, seed: int = 0
) -> tuple[int, list[str]]:
    """Query a sample of chunks with their own (cached) embeddings; each should come back first.

    A chunk whose text is duplicated elsewhere passes when the top hit has the same content. A chunk that
    does not come back first fails when its stored vector is missing or differs from the cache's. When the
    stored vector is right, the miss is the HNSW index's approximation: with random vectors (the free
    embedder), 77.5 % of self-queries came back first at 343,000 vectors and fewer than half at 1,030,156,
    at Chroma's ``ef_search`` of 100; the real model's clustered vectors do far better. Such misses are
    asked again for :data:`WIDE_SEARCH` results, which widens hnswlib's search (it keeps
    ``max(ef_search, k)`` candidates), and count as found when they come back then. The check fails only
    when fewer than :data:`MIN_FOUND_FIRST` of the sample came back either way: an index that does not
    answer as its records say.

    Returns:
        ``(checked, failures)``, one message per failing chunk (or one for the share found first).
    """
    if len(chunks) == 0:
        return 0, []
    part = chunks.sample(n=min(sample, len(chunks)), random_state=seed)
    vecs = cache.get_many(part["content_blake3"].tolist())
    rows = [r for r in part.itertuples(index=False) if r.content_blake3 in vecs]
    if not rows:
        return 0, ["no cached embeddings for the sampled chunks"]
    hits = query(collection, np.stack([vecs[r.content_blake3] for r in rows]), 1)
    # slim records carry no text: the content of each top hit, from the chunks (only theirs: a dict of every
    # chunk cost 0.37 s at 98,777 chunks)
    tops = {h[0].chunk_id for h in hits if h}
    named = chunks[in_set(chunks["chunk_id"], tops)]
    content = dict(zip(named["chunk_id"].tolist(), named["content_blake3"].tolist()))
    missed = []
    for r, h in zip(rows, hits):
        top = h[0] if h else None
        if top is None or (top.chunk_id != r.chunk_id and content.get(top.chunk_id) != r.content_blake3):
            missed.append((r, top))
    if not missed:
        return len(rows), []
    got = collection.get(ids=[r.chunk_id for r, _ in missed], include=["embeddings"])
    stored = {i: np.asarray(e, dtype=np.float32) for i, e in zip(got["ids"], got["embeddings"])}
    failures, approximate = [], []
    for r, top in missed:
        vec = stored.get(r.chunk_id)
        if vec is None or not np.allclose(vec, vecs[r.content_blake3], atol=1e-5):
            failures.append(
                f"{r.path}:{r.start_line}-{r.end_line} ({r.chunk_id}) found "
                f"{top.chunk_id if top else 'nothing'} first, and its stored vector "
                + ("is missing" if vec is None else "differs from its embedding")
            )
        else:
            approximate.append(r)
    found = len(rows) - len(missed) + _found_wider(collection, approximate, vecs)
    if found < MIN_FOUND_FIRST * len(rows):
        failures.append(
            f"only {found} of {len(rows)} sampled chunks came back for their own vector, first or among the "
            f"{WIDE_SEARCH} nearest (e.g. {missed[0][0].path}:{missed[0][0].start_line}): the vector index "
            "does not answer as its records say"
        )
    return len(rows), failures


def _found_wider(collection, rows: list, vecs: dict[str, np.ndarray]) -> int:
    """How many of ``rows`` (chunks whose stored vector is right) come back among the :data:`WIDE_SEARCH`
    nearest to their own vector (ids only: no metadata read for the wide answers)."""
    if not rows:
        return 0
    res = collection.query(
        query_embeddings=np.stack([vecs[r.content_blake3] for r in rows]),
        n_results=max(1, min(WIDE_SEARCH, collection.count())),
        include=[],
    )
    return sum(r.chunk_id in set(ids) for r, ids in zip(rows, res["ids"]))

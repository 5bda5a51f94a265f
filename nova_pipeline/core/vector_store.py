"""The Chroma vector index: clients, one collection per model fingerprint, reconciliation and search.

Reconciliation compares what Chroma *actually* holds with the wanted chunks: wanted ids missing from Chroma
are embedded (through the cache) and upserted in batches; then ids in Chroma that are not wanted are
deleted. New data always lands before stale data goes, so a half-finished run or outside damage is repaired
by the next run, and a killed run loses at most the batches in flight (one embedding, one being written).

Every vector carries its ``bucket`` (:func:`bucket_of`, 16 fixed buckets of chunk ids), so the work can be
split into slices that each reconcile their own buckets (``reconcile(..., buckets=...)``) and never touch
another slice's vectors.

Writers: one per embedded data dir, a ``flock`` on ``NOVA_HOME/vectors.lock`` (concurrent writer processes
corrupt it, chroma #7040); one per bucket against a Chroma server (:func:`bucket_locks`). The Dagster pool
``vector_index_writer`` caps the writers across runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import blake3
import numpy as np
import pandas as pd

from nova_pipeline.core.embedding import Embedder, EmbeddingCache, embed_with_cache
from nova_pipeline.core.errors import IndexNotBuiltError, VectorStoreError
from nova_pipeline.core.guard import DeletionGuard
from nova_pipeline.core.layout import Layout

log = logging.getLogger(__name__)

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

DEFAULT_BATCH = 256  # chunks per batch: small enough to redo, well under Chroma's max batch size
PAGE = 5000


def collection_name(fingerprint: str) -> str:
    """The collection of a model fingerprint (3-512 characters of ``[a-zA-Z0-9._-]``)."""
    return f"nova-{fingerprint}"


def open_client(home: Path, chroma_url: str | None = None, create: bool = True):
    """A Chroma client: ``HttpClient`` at ``chroma_url``, else ``PersistentClient`` under ``home/vectors``.
    ``create=False`` is for readers: a missing data dir is not created (see :func:`open_client_at`).

    Raises:
        IndexNotBuiltError: ``create`` is False and there is no data dir yet.
        VectorStoreError: the server is unreachable or the data dir cannot be opened.
    """
    if not chroma_url:
        return open_client_at(Layout.of(home).vectors, create=create)
    import chromadb

    try:
        u = urlparse(chroma_url if "://" in chroma_url else f"http://{chroma_url}")
        client = chromadb.HttpClient(host=u.hostname or "localhost", port=u.port or 8000,
                                     ssl=u.scheme == "https", settings=_chroma_settings())
    except Exception as exc:  # noqa: BLE001 - chroma raises many types for "cannot connect"
        raise VectorStoreError(f"the Chroma server at {chroma_url} is unreachable ({exc}): is it running, "
                               "is NOVA_CHROMA_URL right?") from exc
    client.nova_location = f"the Chroma server at {chroma_url}"
    return client


def open_client_at(path: Path, create: bool = True):
    """A ``PersistentClient`` on the data dir ``path``, created if missing unless ``create`` is False
    (opening a missing dir would write an empty Chroma database there).

    Raises:
        IndexNotBuiltError: ``create`` is False and ``path`` does not exist.
        VectorStoreError: the data dir cannot be opened.
    """
    import chromadb

    path = Path(path)
    if not create and not path.exists():
        raise IndexNotBuiltError(
            f"no vector index at {path} yet: run the rebuild job "
            "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(path), settings=_chroma_settings())
    except Exception as exc:  # noqa: BLE001
        raise VectorStoreError(f"the Chroma data dir {path} cannot be opened ({exc}): it may be damaged; "
                               "`nova golden reset --yes` rebuilds it from the golden copy") from exc
    client.nova_location = f"the Chroma data dir {path}"
    return client


def _chroma_settings():
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


@contextlib.contextmanager
def writer_lock(home: Path, timeout: float = 600.0) -> Iterator[None]:
    """Exclusive writer lock on the whole vector store of ``home``.

    Raises:
        VectorStoreError: another writer held the lock for ``timeout`` seconds.
    """
    with _flock(Layout.of(home).vectors_lock, timeout):
        yield


@contextlib.contextmanager
def bucket_locks(home: Path, buckets: Sequence[int], timeout: float = 600.0) -> Iterator[None]:
    """Exclusive locks on the given buckets of the vector store (a server-mode writer of a slice).

    Two slices of one run hold disjoint buckets and run side by side; two runs writing the same bucket take
    turns. The locks are taken in bucket order, so writers holding overlapping sets cannot deadlock.

    Raises:
        VectorStoreError: another writer held one of the locks for ``timeout`` seconds.
    """
    layout = Layout.of(home)
    with contextlib.ExitStack() as stack:
        for b in sorted(set(int(b) for b in buckets)):
            stack.enter_context(_flock(layout.vectors_bucket_lock(b), timeout))
        yield


@contextlib.contextmanager
def _flock(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VectorStoreError(
                        f"another writer holds {path} since {timeout:.0f}s; is a rebuild running?"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def get_collection(client, fingerprint: str, create: bool = True):
    """The collection of ``fingerprint`` (cosine space, embeddings supplied by us).

    Raises:
        IndexNotBuiltError: ``create`` is False and the collection does not exist (only then does the
            message say to run the rebuild job).
        VectorStoreError: the store is unreachable (a server that stopped answering) or damaged (a data
            dir Chroma cannot read); the message says which, and where.
    """
    from chromadb.errors import NotFoundError

    name = collection_name(fingerprint)
    try:
        if create:
            return client.get_or_create_collection(
                name,
                metadata={"model_fingerprint": fingerprint, "created_by": "nova_pipeline"},
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=None,
            )
        return client.get_collection(name, embedding_function=None)
    except NotFoundError as exc:
        raise IndexNotBuiltError(
            f"no vector index {name!r} yet: run the rebuild job "
            "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - transport and storage errors come in many types
        raise describe_failure(client, exc, f"collection {name!r}") from exc


def describe_failure(client, exc: Exception, what: str) -> VectorStoreError:
    """A :class:`VectorStoreError` that says whether the store is unreachable or damaged, and where."""
    where = getattr(client, "nova_location", "the vector store")
    if _is_transport_error(exc):
        return VectorStoreError(
            f"{where} is unreachable while reading {what} ({type(exc).__name__}: {exc}): "
            "is the server running?"
        )
    return VectorStoreError(
        f"{where} failed reading {what} ({type(exc).__name__}: {exc}): the store may be "
        "damaged; `nova golden reset --yes` rebuilds it from the golden copy"
    )


def _is_transport_error(exc: BaseException) -> bool:
    import httpx

    for _ in range(10):  # the exception and its causes
        if exc is None:
            return False
        if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def ids_digest(chunk_ids, fingerprint: str) -> str:
    """blake3 of a model fingerprint and a set of chunk ids: what a collection should hold."""
    return blake3.blake3("\n".join([fingerprint, *sorted(chunk_ids)]).encode()).hexdigest()


def store_state(home: Path, fingerprint: str) -> str | None:
    """A fingerprint of the embedded collection's state, read without importing Chroma; None if unknown.

    It covers the collection's id, the ids and write sequence numbers of its segments (Chroma's own
    ``max_seq_id``: every upsert and delete raises it, reads do not), and the size and mtime of the
    segments' index files. Reads (count, get, query) leave it unchanged; any write changes it. It reads
    Chroma's SQLite catalogue read-only; anything unexpected (server mode, no store, another schema)
    gives None, which callers treat as "unknown: verify for real".
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
                files += [
                    (f.name, f.stat().st_size, f.stat().st_mtime_ns)
                    for f in sorted(seg_dir.iterdir())
                    if f.is_file()
                ]
    except (sqlite3.Error, OSError):
        return None
    return blake3.blake3(json.dumps([rows, files]).encode()).hexdigest()


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


def existing_ids(collection, where: dict | None = None) -> set[str]:
    """Every id the collection holds (matching the metadata filter ``where``, when given), paged."""
    ids: set[str] = set()
    offset = 0
    while True:
        got = collection.get(include=[], limit=PAGE, offset=offset, where=where)["ids"]
        ids.update(got)
        if len(got) < PAGE:
            return ids
        offset += len(got)


BUCKETS = 16  # fixed: a vector's bucket must not change when the number of slices does


def bucket_of(chunk_id: str) -> int:
    """The bucket (0-15) of a chunk: its id's first 16 bits modulo :data:`BUCKETS` (ids are blake3 hex)."""
    return int(chunk_id[:4], 16) % BUCKETS


def buckets_of(chunk_ids: pd.Series) -> np.ndarray:
    """:func:`bucket_of` of every id of a Series, vectorised (int array, same order)."""
    if len(chunk_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    return chunk_ids.str.slice(0, 4).map(lambda h: int(h, 16)).to_numpy(dtype=np.int64) % BUCKETS


def slice_buckets(slice_index: int, slices: int) -> list[int]:
    """The buckets slice ``slice_index`` of ``slices`` reconciles (every bucket belongs to exactly one)."""
    return [b for b in range(BUCKETS) if b % slices == slice_index]


def chunk_metadata(row) -> dict:
    """Flat scalar metadata of a chunk row."""
    return {
        "path": row.path,
        "start_line": int(row.start_line),
        "end_line": int(row.end_line),
        "symbol": row.symbol or "",
        "language": row.language,
        "content_blake3": row.content_blake3,
        "bucket": bucket_of(row.chunk_id),
    }


@dataclass
class IndexStats:
    """Counts of :func:`reconcile`. ``embedded`` counts model calls (unique texts)."""

    wanted: int = 0
    present_before: int = 0
    unchanged: int = 0
    to_upsert: int = 0
    upserted: int = 0
    embedded: int = 0
    cache_hits: int = 0
    deleted: int = 0
    batches: int = 0
    count_after: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0


def reconcile(
    collection,
    chunks: pd.DataFrame,
    embedder: Embedder,
    cache: EmbeddingCache,
    batch_size: int = DEFAULT_BATCH,
    max_batch: int | None = None,
    on_batch: Callable[[int, IndexStats], None] | None = None,
    guard: DeletionGuard | None = None,
    buckets: Sequence[int] | None = None,
) -> IndexStats:
    """Make ``collection`` hold exactly the chunks of ``chunks`` (ids, documents, embeddings, metadata).

    The next batch is embedded while the previous one is written (one writer thread): on a fast embedder
    the run costs about the slower of the two, not their sum. A killed run loses at most the two batches
    in flight; everything committed to the cache or Chroma before stays.

    Args:
        collection: the Chroma collection of ``embedder.fingerprint``.
        chunks: the ``source_chunks`` table (needs ``chunk_id, text, content_blake3`` and the metadata).
        embedder: the model; called only for texts the cache lacks.
        cache: the embedding cache of the same fingerprint.
        batch_size: chunks per batch (capped by Chroma's ``get_max_batch_size``).
        on_batch: called after each committed batch with its number and the running stats (in the
            caller's thread).
        guard: refuses, before anything is written, a run that would shrink the collection by a mass
            deletion (see :mod:`nova_pipeline.core.guard`).
        buckets: reconcile only these buckets (see :func:`bucket_of`): ``chunks`` must hold only their
            chunks, and only the collection's vectors of these buckets are listed, upserted or deleted,
            so concurrent slices never touch each other's vectors.

    Raises:
        VectorStoreError: Chroma failed; everything committed so far stays.
        MassDeletionError: the guard refused the run; nothing was written.
    """
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    where = None
    if buckets is not None:
        buckets = sorted({int(b) for b in buckets})
        chunks = chunks[np.isin(buckets_of(chunks["chunk_id"]), buckets)]
        where = {"bucket": {"$in": buckets}}
    stats = IndexStats(wanted=len(chunks))
    try:
        have = existing_ids(collection, where)
    except Exception as exc:  # noqa: BLE001
        raise VectorStoreError(f"cannot list the collection {collection.name}: {exc}") from exc
    stats.present_before = len(have)
    wanted_ids = set(chunks["chunk_id"])
    if guard is not None:
        guard.check_vectors(len(have), len(wanted_ids), collection.name)
    todo = chunks[~chunks["chunk_id"].isin(have)]
    # Shortest texts first across all batches, so each forward pass pads little (as encode() does).
    todo = todo.iloc[np.argsort(todo["text"].str.len().to_numpy(), kind="stable")]
    stats.unchanged = len(chunks) - len(todo)
    stats.to_upsert = len(todo)
    size = max(1, min(batch_size, max_batch or batch_size))

    def write(b: int, part: pd.DataFrame, vecs: np.ndarray) -> int:
        try:
            collection.upsert(ids=part["chunk_id"].tolist(), embeddings=vecs, documents=part["text"].tolist(),
                              metadatas=[chunk_metadata(r) for r in part.itertuples(index=False)])
        except Exception as exc:  # noqa: BLE001
            raise VectorStoreError(f"upsert of batch {b} into {collection.name} failed: {exc}") from exc
        return len(part)

    def committed(b: int, future) -> None:
        stats.upserted += future.result()
        stats.batches = b
        if on_batch is not None:
            on_batch(b, stats)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chroma-writer") as writer:
        pending = None
        for b, start in enumerate(range(0, len(todo), size), 1):
            part = todo.iloc[start : start + size]
            texts, keys = part["text"].tolist(), part["content_blake3"].tolist()
            vecs, es = embed_with_cache(texts, keys, embedder, cache)
            stats.embedded += es.embedded
            stats.cache_hits += es.cache_hits
            stats.embed_seconds += es.seconds
            if pending is not None:
                committed(*pending)
            pending = (b, writer.submit(write, b, part, vecs))
        if pending is not None:
            committed(*pending)
    stale = sorted(have - wanted_ids)
    for start in range(0, len(stale), size):
        try:
            collection.delete(ids=stale[start : start + size])
        except Exception as exc:  # noqa: BLE001
            raise VectorStoreError(f"deleting stale vectors from {collection.name} failed: {exc}") from exc
    stats.deleted = len(stale)  # Chroma's own delete count cannot be trusted: count what we asked for
    if buckets is None:
        stats.count_after = collection.count()
    else:  # the slice's own vectors; counting them in Chroma would list the slice again
        stats.count_after = len(have) + stats.upserted - stats.deleted
    stats.seconds = time.perf_counter() - started
    return stats


@dataclass
class Hit:
    """A search result. Lines are 1-based and inclusive; ``score`` is cosine similarity (1 is identical)."""

    path: str
    start_line: int
    end_line: int
    symbol: str
    language: str
    score: float
    text: str
    chunk_id: str
    store: str = ""  # which store answered: primary or backup
    stale_as_of: str | None = None  # a backup answer: when the golden version it came from was made
    vector_score: float | None = None  # cosine similarity, when the vector side ranked it
    lexical_score: float | None = None  # BM25 score, when the lexical side ranked it
    matched_terms: list[str] = field(default_factory=list)  # query terms (code_tokens) the chunk contains
    exact: bool = False  # the query names this chunk's symbol or path exactly (boosted)

    def snippet(self, lines: int = 3) -> str:
        """The first non-blank lines of the chunk body (its header line left out)."""
        body = self.text.split("\n", 1)[1] if "\n" in self.text else self.text
        return "\n".join([ln for ln in body.splitlines() if ln.strip()][:lines])


def query(collection, vectors: np.ndarray, k: int, where: dict | None = None) -> list[list[Hit]]:
    """Top-``k`` hits for each query vector (``score`` and ``vector_score``: cosine similarity), among the
    chunks whose metadata matches the Chroma ``where`` filter when one is given."""
    res = collection.query(
        query_embeddings=np.asarray(vectors, dtype=np.float32),
        n_results=k,
        where=where or None,
        include=["metadatas", "documents", "distances"],
    )
    out = []
    for ids, metas, docs, dists in zip(res["ids"], res["metadatas"], res["documents"], res["distances"]):
        out.append(
            [
                Hit(
                    path=m["path"],
                    start_line=int(m["start_line"]),
                    end_line=int(m["end_line"]),
                    symbol=m.get("symbol", ""),
                    language=m.get("language", ""),
                    score=1.0 - float(d),
                    text=doc or "",
                    chunk_id=i,
                    vector_score=1.0 - float(d),
                )
                for i, m, doc, d in zip(ids, metas, docs, dists)
            ]
        )
    return out


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
    missing = chunks[~chunks["chunk_id"].isin(have)]
    extra = sorted(have - set(chunks["chunk_id"]))
    named = [f"{r.path}:{r.start_line}-{r.end_line} ({r.chunk_id}) has no vector"
             for r in missing.head(limit).itertuples()]
    named += [f"vector {i} is no chunk's" for i in extra[:limit]]
    return count, len(missing), len(extra), named


def self_retrieval_failures(
    collection, chunks: pd.DataFrame, cache: EmbeddingCache, sample: int, seed: int = 0
) -> tuple[int, list[str]]:
    """Query a sample of chunks with their own (cached) embeddings; each must come back first.

    A chunk whose text is duplicated elsewhere passes when the top hit has the same content.

    Returns:
        ``(checked, failures)``, one message per chunk that did not find itself.
    """
    if len(chunks) == 0:
        return 0, []
    part = chunks.sample(n=min(sample, len(chunks)), random_state=seed)
    vecs = cache.get_many(part["content_blake3"].tolist())
    rows = [r for r in part.itertuples(index=False) if r.content_blake3 in vecs]
    if not rows:
        return 0, ["no cached embeddings for the sampled chunks"]
    hits = query(collection, np.stack([vecs[r.content_blake3] for r in rows]), 1)
    failures = []
    for r, h in zip(rows, hits):
        top = h[0] if h else None
        if top is None or (top.chunk_id != r.chunk_id and top.text != r.text):
            failures.append(
                f"{r.path}:{r.start_line}-{r.end_line} ({r.chunk_id}) found "
                f"{top.chunk_id if top else 'nothing'} first"
            )
    return len(rows), failures


def top_ids(collection, vectors: Sequence[np.ndarray], k: int) -> list[list[str]]:
    """Ids of the top ``k`` hits per query vector (for comparisons in tests and restores)."""
    return [[h.chunk_id for h in hits] for hits in query(collection, np.stack(vectors), k)]

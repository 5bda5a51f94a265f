"""The Chroma vector index: clients, one collection per model fingerprint and record schema, buckets and
queries.

Every vector carries its ``bucket`` (:func:`bucket_of`, 16 fixed buckets of chunk ids), so the work can be
split into slices that each reconcile their own buckets and never touch another slice's vectors. Writers
take the locks of :mod:`nova_pipeline.core.locks`.

**Record schemas.** A *slim* record (the default) holds the vector and only what a query filters on:
``path``, ``language`` and ``bucket``. The chunk's text, lines and symbol are read by chunk id from the
document table of the lexical index (:meth:`~nova_pipeline.core.index.lexical.LexicalIndex.documents`),
which holds every chunk of ``source_chunks``. A *full* record (``NOVA_CHROMA_DOCUMENTS=1``, for tools that
read the collection themselves, such as LangChain's Chroma vector store) also holds the document and the
metadata of :func:`full_metadata`. Measured by ``benchmarks/bench_scaleout.py``: Chroma upserts a bare
vector about 3.7 times as fast as our full record, and the full record's document and trigram index make
up most of an embedded store's bytes.

The collection name carries the schema (:func:`collection_name`): ``nova-<fingerprint>`` is the full
schema (every collection made before slim records existed), ``nova-<fingerprint>.slim2`` the slim one.
Changing the schema builds the other collection beside the live one (vectors copied from it, never
embedded again), marks it complete when its first reconcile finished, and only then do readers switch to it
(:func:`get_collection` with ``create=False``) and the writer drop the old one (:func:`retire_other_schema`):
the same build-beside-then-switch a model change uses.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from nova_pipeline.core.errors import IndexNotBuiltError, VectorStoreError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.settings import env_flag

__all__ = [
    "BUCKETS",
    "CHROMA_DB",
    "DEFAULT_BATCH",
    "FULL",
    "LIST_PAGES",
    "PAGE",
    "SLIM",
    "bucket_of",
    "buckets_of",
    "collection_name",
    "existing_ids",
    "full_metadata",
    "is_complete",
    "is_slim",
    "mark_complete",
    "other_schema",
    "other_schema_collection",
    "record_metadatas",
    "record_schema",
    "retire_other_schema",
    "slim_metadata",
    "upsert_chunks",
    "upsert_records",
    "get_collection",
    "open_client",
    "fresh_client",
    "give_view_slot",
    "open_client_at",
    "open_view",
    "take_view_slot",
    "slice_buckets",
]

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


log = logging.getLogger(__name__)

DEFAULT_BATCH = 256  # chunks per batch: small enough to redo, well under Chroma's max batch size

PAGE = 5000


FULL, SLIM = "full", "slim"  # the record schemas (module docstring)
_SCHEMA_SUFFIX = {FULL: "", SLIM: ".slim2"}


def record_schema(env: dict | None = None) -> str:
    """The record schema this process writes: :data:`FULL` when ``NOVA_CHROMA_DOCUMENTS`` is 1/true/yes/on,
    else :data:`SLIM`."""
    return FULL if env_flag("NOVA_CHROMA_DOCUMENTS", env) else SLIM


def collection_name(fingerprint: str, records: str | None = None) -> str:
    """The collection of a model fingerprint in a record schema (default: :func:`record_schema`):
    ``nova-<fingerprint>`` for full records, ``nova-<fingerprint>.slim2`` for slim ones (3-512 characters of
    ``[a-zA-Z0-9._-]``)."""
    return f"nova-{fingerprint}{_SCHEMA_SUFFIX[records or record_schema()]}"


def slim_metadata(path: str, language: str, bucket: int) -> dict:
    """A slim record's metadata: what queries filter on (``path``, ``language``) and the slice ``bucket``."""
    return {"path": path, "language": language, "bucket": int(bucket)}


def full_metadata(row) -> dict:
    """A full record's metadata (flat scalars) of a chunk row (``chunk_id, path, start_line, end_line,
    symbol, language, content_blake3``)."""
    return {
        "path": row.path,
        "start_line": int(row.start_line),
        "end_line": int(row.end_line),
        "symbol": row.symbol or "",
        "language": row.language,
        "content_blake3": row.content_blake3,
        "bucket": bucket_of(row.chunk_id),
    }


def is_slim(collection) -> bool:
    """Whether ``collection`` keeps slim records (its metadata says so)."""
    return (getattr(collection, "metadata", None) or {}).get("records") == SLIM


def upsert_chunks(collection, part: pd.DataFrame, vectors: np.ndarray) -> None:
    """Upsert chunk rows (the ``source_chunks`` columns, ``text`` needed only for a full collection) with
    their vectors, in the collection's own record schema. The one write path of reconcile, live updates and
    imports. Raises whatever Chroma raises (callers name the batch)."""
    ids, metas = part["chunk_id"].tolist(), record_metadatas(collection, part)
    if is_slim(collection):
        collection.upsert(ids=ids, embeddings=vectors, metadatas=metas)
        return
    collection.upsert(ids=ids, embeddings=vectors, documents=part["text"].tolist(), metadatas=metas)


def record_metadatas(collection, part: pd.DataFrame) -> list[dict]:
    """The metadata :func:`upsert_chunks` stores for each chunk row of ``part``, in ``collection``'s record
    schema: slim (path, language, bucket) or full."""
    if is_slim(collection):
        paths, languages = part["path"].tolist(), part["language"].tolist()
        return [slim_metadata(p, g, b) for p, g, b in zip(paths, languages, buckets_of(part["chunk_id"]))]
    return [full_metadata(r) for r in part.itertuples(index=False)]


def upsert_records(collection, ids: list[str], embeddings, documents, metadatas: list[dict]) -> None:
    """Upsert records read back from an export or a journal (either schema) in ``collection``'s own schema:
    a slim collection keeps only the slim metadata; a full one takes the documents when every record has
    one (a slim export has none: its texts are in the golden lexical index)."""
    if is_slim(collection):
        metas = [
            slim_metadata(m["path"], m.get("language", ""), m.get("bucket", bucket_of(i)))
            for i, m in zip(ids, metadatas)
        ]
        collection.upsert(ids=ids, embeddings=embeddings, metadatas=metas)
        return
    docs = {"documents": list(documents)} if documents is not None and None not in documents else {}
    collection.upsert(ids=ids, embeddings=embeddings, metadatas=metadatas, **docs)


COMPLETE = "complete"  # collection metadata: its first reconcile finished (readers may switch to it)


def is_complete(collection) -> bool:
    """Whether readers may use ``collection``: one made before record schemas (no ``records`` key) is, a
    new one only once :func:`mark_complete` ran."""
    meta = getattr(collection, "metadata", None) or {}
    return "records" not in meta or bool(meta.get(COMPLETE))


def mark_complete(collection) -> None:
    """Record that ``collection`` holds every chunk (its reconcile or import finished); idempotent."""
    if is_complete(collection):
        return
    try:
        collection.modify(metadata={**(collection.metadata or {}), COMPLETE: True})
    except Exception as exc:  # noqa: BLE001
        raise VectorStoreError(f"cannot mark {collection.name} complete: {exc}") from exc


def other_schema(records: str | None = None) -> str:
    """The record schema that is not ``records`` (default: :func:`record_schema`)."""
    return FULL if (records or record_schema()) == SLIM else SLIM


def other_schema_collection(client, fingerprint: str, records: str | None = None):
    """The other record schema's collection of ``fingerprint`` (the one a schema change copies vectors
    from), or None when there is none."""
    records = records or record_schema()
    try:
        return client.get_collection(
            collection_name(fingerprint, FULL if records == SLIM else SLIM), embedding_function=None
        )
    except Exception:  # noqa: BLE001 - missing (or unreadable): nothing to copy from
        return None


def retire_other_schema(client, fingerprint: str, records: str | None = None) -> str | None:
    """Drop the other record schema's collection of ``fingerprint`` once this schema's is complete: the end
    of a schema change. Returns the dropped collection's name, or None (nothing to drop, or this schema's
    collection is not complete yet)."""
    records = records or record_schema()
    other = FULL if records == SLIM else SLIM
    try:
        mine = client.get_collection(collection_name(fingerprint, records), embedding_function=None)
        if not is_complete(mine):
            return None
        name = collection_name(fingerprint, other)
        client.get_collection(name, embedding_function=None)
    except Exception:  # noqa: BLE001 - either one missing: nothing to retire
        return None
    client.delete_collection(name)
    log.info("dropped %s: %s holds every chunk in the %s record schema", name, mine.name, records)
    return name


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
        client = chromadb.HttpClient(
            host=u.hostname or "localhost",
            port=u.port or 8000,
            ssl=u.scheme == "https",
            settings=_chroma_settings(),
        )
    except Exception as exc:  # noqa: BLE001 - chroma raises many types for "cannot connect"
        raise VectorStoreError(
            f"the Chroma server at {chroma_url} is unreachable ({exc}): is it running, "
            "is NOVA_CHROMA_URL right?"
        ) from exc
    client.nova_location = f"the Chroma server at {chroma_url}"
    return client


CHROMA_DB = "chroma.sqlite3"  # the catalogue of an embedded data dir: no data dir without it


def open_client_at(path: Path, create: bool = True, view: int = 0):
    """A ``PersistentClient`` on the data dir ``path``, created if missing unless ``create`` is False.

    A reader passes ``create=False``: a missing directory, or one without Chroma's catalogue (an empty
    ``vectors/``), is refused rather than turned into an empty Chroma database. ``view`` > 0 opens a
    separate in-process view of the same data dir: Chroma keeps one system per path string and process, and
    loads a collection's HNSW index once, so a reader that must see another process's writes opens a new
    view (the path spelled ``path/./.`` ...) instead of reusing a stale one.

    Raises:
        IndexNotBuiltError: ``create`` is False and there is no data dir at ``path``.
        VectorStoreError: the data dir cannot be opened.
    """
    import chromadb

    path = Path(path)
    if not create and not (path / CHROMA_DB).is_file():
        raise IndexNotBuiltError(
            f"no vector index at {path} yet: run the rebuild job "
            "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(path) + "/." * max(0, view), settings=_chroma_settings())
    except Exception as exc:  # noqa: BLE001
        raise VectorStoreError(
            f"the Chroma data dir {path} cannot be opened ({exc}): it may be damaged; "
            "`nova golden reset --yes` rebuilds it from the golden copy"
        ) from exc
    client.nova_location = f"the Chroma data dir {path}"
    return client


_slots_lock = threading.Lock()
_slots_used: set[int] = set()


def take_view_slot() -> int:
    """A view number no other open view of this process uses (see :func:`open_client_at`); give it back
    with :func:`give_view_slot` once the client is closed."""
    with _slots_lock:
        slot = next(i for i in range(1, len(_slots_used) + 2) if i not in _slots_used)
        _slots_used.add(slot)
        return slot


def give_view_slot(slot: int) -> None:
    """Return a slot of :func:`take_view_slot`."""
    with _slots_lock:
        _slots_used.discard(slot)


def open_view(path: Path, create: bool = True) -> tuple[object, int]:
    """``(client, slot)``: a new view of the data dir ``path`` in a free slot (:func:`open_client_at`), the
    slot given back if the open fails. Close the client, then give the slot back.

    Raises:
        IndexNotBuiltError, VectorStoreError: as :func:`open_client_at`.
    """
    slot = take_view_slot()
    try:
        return open_client_at(path, create, view=slot), slot
    except BaseException:
        give_view_slot(slot)
        raise


@contextlib.contextmanager
def fresh_client(
    home: Path | Layout,
    chroma_url: str | None = None,
    path: Path | None = None,
    create: bool = True,
    lock_timeout: float = 600.0,
) -> Iterator[object]:
    """A client that sees the store as it is now, closed after the block: for a writer (under the writer
    lock), and for any reader that must not see an older state. An embedded data dir (``path``, default
    ``NOVA_HOME/vectors``) gets its own view, never the process's cached one, which may predate another
    process's writes; a Chroma server's client is fresh by nature. The steps of a run in one process share
    one view of the primary while nothing else wrote since (:mod:`~nova_pipeline.core.index.run_view`).

    Opening an embedded data dir rewrites a few of Chroma's files, so it happens under ``home``'s writer lock
    (re-entrant: a writer that holds it already just goes on), held for the open only. ``home`` None opens
    without the lock: for a private directory no other process knows (a throwaway check).

    Raises:
        IndexNotBuiltError: ``create`` is False and there is no data dir.
        VectorStoreError: the store cannot be opened.
        LockTimeoutError: another writer held the writer lock for ``lock_timeout`` seconds.
    """
    from nova_pipeline.core.index import run_view
    from nova_pipeline.core.locks import held, writer_lock

    if chroma_url and path is None:
        yield open_client(home, chroma_url)
        return
    where = Path(path) if path is not None else Layout.of(home).vectors
    layout = Layout.of(home) if home is not None else None
    writer = layout is not None and held(layout.vectors_lock)  # a writer's hold, before the open's own
    with writer_lock(home, lock_timeout, bump=False) if layout is not None else contextlib.nullcontext():
        got = run_view.take(where, layout, writer) if layout is not None else None  # a run's steps share one
        if got is None:
            client, slot = open_view(where, create)
            close = functools.partial(_close_view, client, slot)
            kept = run_view.keep(where, layout, client, close, writer) if layout is not None else None
        else:
            client, kept = got
    try:
        yield client
    finally:
        if kept is not None:
            run_view.give_back(kept)
        else:
            _close_view(client, slot)


def _close_view(client, slot: int) -> None:
    """Close a view of :func:`fresh_client` and free its slot (closing writes nothing; a half-open client
    releases nothing)."""
    with contextlib.suppress(Exception):
        client.close()
    give_view_slot(slot)


def _chroma_settings():
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def get_collection(client, fingerprint: str, create: bool = True, records: str | None = None):
    """The collection of ``fingerprint`` (cosine space, embeddings supplied by us) in the record schema
    ``records`` (default :func:`record_schema`).

    A writer (``create`` True) gets that schema's collection, made if missing. A reader (``create`` False)
    gets it when it is complete (:func:`is_complete`), else the other schema's collection while that one
    exists (a schema change being built beside it), else the incomplete one.

    Raises:
        IndexNotBuiltError: ``create`` is False and neither schema's collection exists (only then does the
            message say to run the rebuild job).
        VectorStoreError: the store is unreachable (a server that stopped answering) or damaged (a data
            dir Chroma cannot read); the message says which, and where.
    """
    from chromadb.errors import NotFoundError

    records = records or record_schema()
    name = collection_name(fingerprint, records)
    try:
        if create:
            return client.get_or_create_collection(
                name,
                metadata={
                    "model_fingerprint": fingerprint,
                    "created_by": "nova_pipeline",
                    "records": records,
                },
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=None,
            )
        mine = None
        with contextlib.suppress(NotFoundError):
            mine = client.get_collection(name, embedding_function=None)
            if is_complete(mine):
                return mine
        other = collection_name(fingerprint, FULL if records == SLIM else SLIM)
        with contextlib.suppress(NotFoundError):
            return client.get_collection(other, embedding_function=None)
        if mine is not None:
            return mine
    except NotFoundError as exc:
        raise _not_built(name) from exc
    except Exception as exc:  # noqa: BLE001 - transport and storage errors come in many types
        raise _describe_failure(client, exc, f"collection {name!r}") from exc
    raise _not_built(name)


def _not_built(name: str) -> IndexNotBuiltError:
    return IndexNotBuiltError(
        f"no vector index {name!r} yet: run the rebuild job "
        "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild)"
    )


def _describe_failure(client, exc: Exception, what: str) -> VectorStoreError:
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


LIST_PAGES = 8


def existing_ids(collection, where: dict | None = None) -> set[str]:
    """Every id the collection holds (matching the metadata filter ``where``, when given), in at most about
    :data:`LIST_PAGES` pages of at least :data:`PAGE` ids.

    Chroma reads a page with ``LIMIT``/``OFFSET`` and each ``get`` has a fixed cost of its own: in pages of
    5,000, 98,779 ids took 1.15 s where one ``get`` took 0.20 s, and since each page skips the rows before
    it, the cost of fixed-size pages grows with the square of the collection. A page of an eighth of the
    collection keeps the listing linear while bounding the memory of one answer."""
    size = max(PAGE, -(-collection.count() // LIST_PAGES))
    ids: set[str] = set()
    offset = 0
    while True:
        got = collection.get(include=[], limit=size, offset=offset, where=where)["ids"]
        ids.update(got)
        if len(got) < size:
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

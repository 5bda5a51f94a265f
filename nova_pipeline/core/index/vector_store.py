"""The Chroma vector index: clients, one collection per model fingerprint, buckets and queries.

Every vector carries its ``bucket`` (:func:`bucket_of`, 16 fixed buckets of chunk ids), so the work can be
split into slices that each reconcile their own buckets and never touch another slice's vectors. Writers
take the locks of :mod:`nova_pipeline.core.locks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from nova_pipeline.core.errors import IndexNotBuiltError, VectorStoreError
from nova_pipeline.core.layout import Layout

__all__ = [
    "BUCKETS",
    "DEFAULT_BATCH",
    "PAGE",
    "Hit",
    "bucket_of",
    "buckets_of",
    "collection_name",
    "existing_ids",
    "get_collection",
    "open_client",
    "fresh_client",
    "give_view_slot",
    "open_client_at",
    "take_view_slot",
    "query",
    "slice_buckets",
    "top_ids",
]

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


log = logging.getLogger(__name__)

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
    process's writes; a Chroma server's client is fresh by nature.

    Opening an embedded data dir rewrites a few of Chroma's files, so it happens under ``home``'s writer lock
    (re-entrant: a writer that holds it already just goes on), held for the open only. ``home`` None opens
    without the lock: for a private directory no other process knows (a throwaway check).

    Raises:
        IndexNotBuiltError: ``create`` is False and there is no data dir.
        VectorStoreError: the store cannot be opened.
        LockTimeoutError: another writer held the writer lock for ``lock_timeout`` seconds.
    """
    from nova_pipeline.core.locks import writer_lock

    if chroma_url and path is None:
        yield open_client(home, chroma_url)
        return
    where = Path(path) if path is not None else Layout.of(home).vectors
    slot = take_view_slot()
    try:
        with writer_lock(home, lock_timeout, bump=False) if home is not None else contextlib.nullcontext():
            client = open_client_at(where, create, view=slot)
        try:
            yield client
        finally:
            with contextlib.suppress(
                Exception
            ):  # closing writes nothing; a half-open client releases nothing
                client.close()
    finally:
        give_view_slot(slot)


def _chroma_settings():
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


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
        raise _describe_failure(client, exc, f"collection {name!r}") from exc


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
    merged: list[str] = field(default_factory=list)  # other chunks of the same place collapsed into this hit

    def snippet(self, lines: int = 3) -> str:
        """The first non-blank lines of the chunk body (its header line left out)."""
        body = self.text.split("\n", 1)[1] if "\n" in self.text else self.text
        return "\n".join([ln for ln in body.splitlines() if ln.strip()][:lines])


def query(
    collection, vectors: np.ndarray, k: int, where: dict | None = None, documents: bool = True
) -> list[list[Hit]]:
    """Top-``k`` hits for each query vector (``score`` and ``vector_score``: cosine similarity), among the
    chunks whose metadata matches the Chroma ``where`` filter when one is given. ``documents`` False leaves
    each hit's ``text`` empty (fetched later for the few hits shown).

    A hit whose record has no metadata is left out: a view of an embedded store opened before another
    process deleted that record still finds it in its in-memory vector index, while the record itself is
    gone (the view is reopened at the writer's next generation; until then the deleted chunk is simply not
    an answer)."""
    res = collection.query(
        query_embeddings=np.asarray(vectors, dtype=np.float32),
        n_results=k,
        where=where or None,
        include=["metadatas", "documents", "distances"] if documents else ["metadatas", "distances"],
    )
    out = []
    docs_of = res["documents"] if documents else [[None] * len(ids) for ids in res["ids"]]
    for ids, metas, docs, dists in zip(res["ids"], res["metadatas"], docs_of, res["distances"]):
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
                if m is not None
            ]
        )
    return out


def top_ids(collection, vectors: Sequence[np.ndarray], k: int) -> list[list[str]]:
    """Ids of the top ``k`` hits per query vector (for comparisons in tests and restores)."""
    return [[h.chunk_id for h in hits] for hits in query(collection, np.stack(vectors), k)]

"""Queries of the vector index: hits of a query vector, and their documents from the document table.

A slim record (see :mod:`~nova_pipeline.core.index.vector_store`) gives a hit its path and language only;
:func:`with_documents` fills in its lines, symbol and text from the document table (the lexical index,
:meth:`~nova_pipeline.core.index.lexical.LexicalIndex.documents`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nova_pipeline.core.index.vector_store import is_slim

__all__ = ["Hit", "query", "texts_by_id", "top_ids", "where_filter", "with_documents"]


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


def query(collection, vectors: np.ndarray, k: int, where: dict | None = None) -> list[list[Hit]]:
    """Top-``k`` hits for each query vector (``score`` and ``vector_score``: cosine similarity), among the
    chunks whose metadata matches the Chroma ``where`` filter when one is given. Hits carry no text:
    :func:`with_documents` reads it from the document table.

    A slim record (module docstring) gives only ``path`` and ``language``: its hit has ``start_line`` 0 and
    no symbol, for :func:`with_documents` to fill in. A full record gives its lines and symbol too.

    A hit whose record has no metadata is left out: a view of an embedded store opened before another
    process deleted that record still finds it in its in-memory vector index, while the record itself is
    gone (the view is reopened at the writer's next generation; until then the deleted chunk is simply not
    an answer)."""
    res = collection.query(
        query_embeddings=np.asarray(vectors, dtype=np.float32),
        n_results=k,
        where=where or None,
        include=["metadatas", "distances"],
    )
    return [
        [
            Hit(
                path=m["path"],
                start_line=int(m.get("start_line", 0)),
                end_line=int(m.get("end_line", 0)),
                symbol=m.get("symbol", ""),
                language=m.get("language", ""),
                score=1.0 - float(d),
                text="",
                chunk_id=i,
                vector_score=1.0 - float(d),
            )
            for i, m, d in zip(ids, metas, dists)
            if m is not None
        ]
        for ids, metas, dists in zip(res["ids"], res["metadatas"], res["distances"])
    ]


def with_documents(hits: list[Hit], docs, collection=None) -> list[Hit]:
    """``hits`` with their path, lines, symbol, language and text from the document table ``docs`` (a
    lexical index, or None), in the same order. A hit the table lacks keeps what its full record says
    (text read from ``collection``, when given) or, from a slim record, is left out: its chunk is no longer
    in ``source_chunks`` and its vector is about to be deleted."""
    found = docs.documents([h.chunk_id for h in hits]) if docs is not None and hits else {}
    need = [h.chunk_id for h in hits if (d := found.get(h.chunk_id)) is None or d.text is None]
    stored = {}
    if need and collection is not None and not is_slim(collection):
        got = collection.get(ids=need, include=["documents"])
        stored = {i: t or "" for i, t in zip(got["ids"], got["documents"])}
    out = []
    for h in hits:
        d = found.get(h.chunk_id)
        if d is not None:
            h.path, h.start_line, h.end_line, h.symbol = d.path, d.start_line, d.end_line, d.symbol
            h.language = d.language or h.language
            h.text = d.text if d.text is not None else stored.get(h.chunk_id, h.text)
        elif h.start_line:
            h.text = stored.get(h.chunk_id, h.text)
        else:
            continue
        out.append(h)
    return out


def top_ids(collection, vectors: Sequence[np.ndarray], k: int) -> list[list[str]]:
    """Ids of the top ``k`` hits per query vector (for comparisons in tests and restores)."""
    return [[h.chunk_id for h in hits] for hits in query(collection, np.stack(vectors), k)]


def texts_by_id(lex, ids: list[str]) -> dict[str, str]:
    """Chunk id → text, for ``ids``, from the document table of the lexical index ``lex`` (none when ``ids``
    is empty or there is no ``lex``)."""
    return {i: d.text or "" for i, d in lex.documents(ids).items()} if ids and lex is not None else {}


def where_filter(lex, path: str | None, language: str | None) -> tuple[dict | None, list[str] | None]:
    """``(where, paths)``: the Chroma filter for ``path``/``language``, and the paths the glob matches
    (None when there is no glob, or no lexical index to list paths from)."""
    clauses = []
    paths = None
    if language:
        clauses.append({"language": {"$eq": language}})
    if path and lex is not None:
        paths = lex.paths_matching(path)
        if paths and len(paths) < lex.distinct_paths:
            clauses.append({"path": {"$in": paths}})
    where = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
    return where, paths

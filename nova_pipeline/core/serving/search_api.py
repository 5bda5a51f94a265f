"""The Python search API: ``nova_pipeline.search()`` and the JSON shape of a hit.

Calls share one :class:`~nova_pipeline.core.serving.searcher.Searcher` per ``(NOVA_HOME, NOVA_CHROMA_URL,
model)`` in the process, so a program that searches in a loop loads the model and the indexes once; each
reopens what changed (a new lexical directory, a new generation of the vector store, a new CURRENT).
Measured by ``benchmarks/bench_search.py`` (repeated API calls against ``Searcher.search``).
"""

from __future__ import annotations

import threading

from nova_pipeline.core.errors import IndexNotBuiltError
from nova_pipeline.core.index.embedding import Embedder
from nova_pipeline.core.index.ranking import HYBRID
from nova_pipeline.core.index.vector_query import Hit
from nova_pipeline.core.serving.searcher import Searcher
from nova_pipeline.core.settings import Settings

__all__ = ["context", "hit_json", "search", "shared_searcher"]


def hit_json(h: Hit) -> dict:
    """A hit as JSON (``nova search --json`` and ``nova serve``'s ``/search``)."""
    return {
        "path": h.path,
        "start_line": h.start_line,
        "end_line": h.end_line,
        "symbol": h.symbol,
        "language": h.language,
        "score": round(h.score, 6),
        "vector_score": None if h.vector_score is None else round(h.vector_score, 4),
        "lexical_score": None if h.lexical_score is None else round(h.lexical_score, 4),
        "matched_terms": h.matched_terms,
        "exact": h.exact,
        "snippet": h.snippet(),
        "chunk_id": h.chunk_id,
        "merged_chunks": h.merged,
        "store": h.store,
        "stale_as_of": h.stale_as_of,
    }


_SHARED: dict[tuple, Searcher] = {}
_SHARED_LOCK = threading.Lock()


def shared_searcher(settings: Settings, embedder: Embedder | None = None) -> Searcher:
    """The process's :class:`Searcher` of ``(NOVA_HOME, NOVA_CHROMA_URL, model)``, made on first use and kept:
    the model, the BM25 index and the store views stay loaded between calls, and each reopens what changed
    (a new lexical directory, a new generation of the vector store, a new CURRENT)."""
    from nova_pipeline.core.serving.model_switch import FollowingSearcher

    fingerprint = embedder.fingerprint if embedder is not None else ""
    key = (str(settings.home), settings.chroma_url or "", fingerprint, id(embedder) if embedder else 0)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            # with the default model, follow nova model switch (a process may live for days: nova mcp)
            found = _SHARED[key] = (
                Searcher(settings, embedder)
                if embedder is not None
                else FollowingSearcher(settings.home, lambda d: Searcher(settings, model_dir=d))
            )
        return found


def search(
    text: str,
    k: int = 5,
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    mode: str = HYBRID,
    path: str | None = None,
    language: str | None = None,
    collapse: bool = True,
) -> list[Hit]:
    """The ``k`` best chunks for ``text``, best first (hybrid by default; see the module docstring); each
    hit says which store answered (``store``), from the backup ``stale_as_of``, and why it matched
    (``vector_score``, ``lexical_score``, ``matched_terms``).

    Calls share one :class:`Searcher` per ``(NOVA_HOME, NOVA_CHROMA_URL, model)`` (:func:`shared_searcher`),
    so a program that searches in a loop loads the model and the indexes once.

    Args:
        text: the query, in natural language or code.
        k: number of hits.
        settings: default: from the environment (``NOVA_HOME``, ``NOVA_CHROMA_URL``).
        embedder: default: the bundled all-MiniLM-L6-v2, loaded only once the index is known to exist.
        mode: ``hybrid``, ``vector`` or ``lexical``.
        path: a glob over root-relative paths; language: a manifest language. Both filter every mode.
        collapse: one hit per place (adjacent or overlapping chunks of one symbol merged; ``k`` counts
            places); False: raw chunks.

    Raises:
        InvalidRequestError (a ``ValueError``): an unknown mode.
        IndexNotBuiltError: nothing has been indexed yet; the message says to run the rebuild job.
        VectorStoreError, FailoverError: the vector store cannot answer and no backup store can.
    """
    settings = settings or Settings.from_env(require_source=False)
    _require_something_built(settings)  # before loading the model
    return (
        shared_searcher(settings, embedder)
        .search(text, k, mode=mode, path=path, language=language, collapse=collapse)
        .hits
    )


def context(
    question: str,
    max_tokens: int = 2000,
    tokenizer: str | None = None,
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    k: int = 20,
    mode: str = HYBRID,
    path: str | None = None,
    language: str | None = None,
    expand: bool = False,
):
    """The context for an LLM prompt about ``question`` (``expand``: with the graph neighbours of the top
    hits): the best places, packed under ``max_tokens``
    tokens of ``tokenizer`` (see :mod:`nova_pipeline.core.serving.context`). Returns a ``Context``
    (``.markdown()``, ``.as_json()``, ``.tokens_used``); the process's warm :class:`Searcher` answers.

    Raises:
        InvalidRequestError (a ``ValueError``): a bad budget, tokenizer or mode.
        IndexNotBuiltError, VectorStoreError, FailoverError: as :func:`search`.
    """
    from nova_pipeline.core.serving.context import build_context

    settings = settings or Settings.from_env(require_source=False)
    _require_something_built(settings)
    return build_context(
        shared_searcher(settings, embedder), question, max_tokens, tokenizer, k, mode, path, language, expand
    )


def _require_something_built(settings: Settings) -> None:
    """Raise :class:`IndexNotBuiltError` when there is neither an embedded primary nor a golden copy (a
    Chroma server is asked by the search itself)."""
    from nova_pipeline.core.index.vector_store import CHROMA_DB
    from nova_pipeline.core.protect import golden

    if settings.chroma_url or (settings.layout.vectors / CHROMA_DB).is_file():
        return
    if (golden.golden_root(settings.home) / golden.CURRENT).is_file():
        return
    raise IndexNotBuiltError(
        f"nothing is indexed under {settings.home.name}/ yet: run the rebuild job "
        "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild)"
    )

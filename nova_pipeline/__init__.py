"""nova_pipeline: a Dagster pipeline that keeps a searchable, compressed, backed-up store of a source tree.

Python API: :func:`search` (``nova_pipeline.search(query, k=5, mode="hybrid", path=None, language=None,
collapse=True) -> list[Hit]``), which keeps one warm :class:`Searcher` per ``(NOVA_HOME, NOVA_CHROMA_URL,
model)`` in the process, and :class:`Searcher` itself (``Searcher(Settings.from_env(require_source=False))
.search(query, k).hits``) for callers who manage their own; :class:`Settings` builds its settings.
"""

__version__ = "0.1.0"


def search(
    query: str,
    k: int = 5,
    mode: str = "hybrid",
    path: str | None = None,
    language: str | None = None,
    collapse: bool = True,
):
    """The ``k`` best chunks for ``query``, best first, with the settings of the environment (``NOVA_HOME``,
    ``NOVA_CHROMA_URL``, ``NOVA_SEARCH_*``).

    ``mode`` is ``hybrid`` (vector and BM25 fused), ``vector`` or ``lexical``; ``path`` (a glob over
    root-relative paths) and ``language`` filter every mode. ``collapse`` (default) merges hits of adjacent
    or overlapping chunks of one symbol into one hit and ``k`` counts those. Returns ``list[Hit]``; the
    arguments, and the errors raised (``ValueError``, ``IndexNotBuiltError``, ``VectorStoreError``), are
    those of :func:`nova_pipeline.core.serving.search_api.search`. The first call loads the model and the
    indexes; later calls reuse them (reopening what a rebuild changed).
    """
    from nova_pipeline.core.serving.search_api import search as _search

    return _search(query, k, mode=mode, path=path, language=language, collapse=collapse)


def context(question: str, max_tokens: int = 2000, tokenizer: str | None = None, **search_options):
    """What an LLM prompt needs about ``question``: the best places of the index (adjacent slices of one
    symbol merged), packed by score under ``max_tokens`` tokens of ``tokenizer`` (a ``tokenizer.json``
    path or a Hugging Face name; default: the embedding model's word pieces), then ordered by file and line.
    Returns a ``Context``: ``.markdown()``, ``.as_json()``, ``.tokens_used`` (never over the budget).
    ``search_options``: ``k``, ``mode``, ``path``, ``language``. Errors: as :func:`search`, and
    ``ValueError`` for a bad budget or tokenizer."""
    from nova_pipeline.core.serving.search_api import context as _context

    return _context(question, max_tokens, tokenizer, **search_options)


def graph(kind: str, name: str) -> tuple[str, list[dict]]:
    """The code graph of the index at ``NOVA_HOME``: ``kind`` is ``callers``, ``callees`` or ``imports``;
    ``name`` a qualified name (``json.decoder.JSONDecoder.decode``) or a unique suffix of one
    (``JSONDecoder.decode``). Returns ``(qualified name, sites)``, each site a dict with ``source``,
    ``target`` ("" when unresolved), ``target_text`` (what the site says), ``kind``, ``path`` and ``line``
    (1-based). Errors: ``InvalidRequestError`` for an unknown or ambiguous name (the message lists the
    candidates), ``TableNotMaterializedError`` before the first build."""
    from nova_pipeline.core.index.graph import load
    from nova_pipeline.core.settings import Settings

    return load(Settings.from_env(require_source=False).home).query(kind, name)


def __getattr__(name: str):
    """``nova_pipeline.Searcher`` and ``nova_pipeline.Settings``, imported on first use (importing the package
    stays cheap: no torch, no Chroma)."""
    if name == "Searcher":
        from nova_pipeline.core.serving.searcher import Searcher

        return Searcher
    if name == "Settings":
        from nova_pipeline.core.settings import Settings

        return Settings
    raise AttributeError(f"module 'nova_pipeline' has no attribute {name!r}")


__all__ = ["Searcher", "Settings", "context", "graph", "search"]

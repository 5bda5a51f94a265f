"""nova_pipeline: a Dagster pipeline that keeps a searchable, compressed, backed-up store of a source tree.

Python API: :func:`search` (``nova_pipeline.search(query, k=5, mode="hybrid", path=None, language=None)
-> list[Hit]``).
"""

__version__ = "0.1.0"


def search(
    query: str, k: int = 5, mode: str = "hybrid", path: str | None = None, language: str | None = None
):
    """The ``k`` best chunks for ``query``, best first, with the settings of the environment (``NOVA_HOME``,
    ``NOVA_CHROMA_URL``, ``NOVA_SEARCH_*``).

    ``mode`` is ``hybrid`` (vector and BM25 fused), ``vector`` or ``lexical``; ``path`` (a glob over
    root-relative paths) and ``language`` filter every mode. Returns ``list[Hit]``; the arguments, and the
    errors raised (``ValueError``, ``IndexNotBuiltError``, ``VectorStoreError``), are those of
    :func:`nova_pipeline.core.serving.searcher.search`.
    """
    from nova_pipeline.core.serving.search_api import search as _search

    return _search(query, k, mode=mode, path=path, language=language)


__all__ = ["search"]

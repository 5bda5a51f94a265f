"""nova_pipeline: a Dagster pipeline that keeps a searchable, compressed, backed-up store of a source tree.

Python API: :func:`search` (``nova_pipeline.search(query, k) -> list[Hit]``).
"""

__version__ = "0.1.0"


def search(query: str, k: int = 5):
    """The ``k`` chunks nearest to ``query``; see :func:`nova_pipeline.core.search.search`."""
    from nova_pipeline.core.search import search as _search

    return _search(query, k)


__all__ = ["search"]

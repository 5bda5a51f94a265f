"""The ``index`` group: ``source_chunks``, ``lexical_index`` and ``vector_index``.

Owns chunking, the embedding model and its cache, the Chroma collection (clients, reconciliation,
verification), the BM25 index and the ranking of hybrid search. Imports the ``core`` root, ``ingest`` and
``compression``.
"""

__all__ = [
    "chunking",
    "embedding",
    "embedding_cache",
    "lexical",
    "query_batcher",
    "ranking",
    "reconcile",
    "vector_store",
    "verification",
]

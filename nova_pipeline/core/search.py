"""Semantic search over the vector index, with the same settings as the pipeline."""

from __future__ import annotations

from nova_pipeline.core.embedding import Embedder, SentenceTransformerEmbedder, bundled_fingerprint
from nova_pipeline.core.errors import IndexNotBuiltError
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.vector_store import Hit, get_collection, open_client, query


def search(
    text: str, k: int = 5, settings: Settings | None = None, embedder: Embedder | None = None
) -> list[Hit]:
    """The ``k`` chunks nearest to ``text``, best first.

    Args:
        text: the query, in natural language or code.
        k: number of hits.
        settings: default: from the environment (``NOVA_HOME``, ``NOVA_CHROMA_URL``).
        embedder: default: the bundled all-MiniLM-L6-v2, loaded only once the index is known to exist.

    Raises:
        IndexNotBuiltError: nothing has been indexed yet; the message says to run the rebuild job.
        VectorStoreError: the vector store is unreachable.
    """
    settings = settings or Settings.from_env(require_source=False)
    fingerprint = embedder.fingerprint if embedder is not None else bundled_fingerprint()
    collection = get_collection(open_client(settings.home, settings.chroma_url), fingerprint, create=False)
    if collection.count() == 0:
        raise IndexNotBuiltError(
            f"the vector index {collection.name} is empty: run the rebuild job "
            "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild)"
        )
    embedder = embedder or SentenceTransformerEmbedder()
    return query(collection, embedder.embed([text]), k)[0]

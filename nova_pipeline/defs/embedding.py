"""Assets and checks of the semantic index: source_chunks and vector_index."""

import dagster as dg
import pandas as pd

from nova_pipeline.core.chunking import chunk_manifest
from nova_pipeline.core.embedding import EmbeddingCache
from nova_pipeline.core.tables import read_table
from nova_pipeline.core.vector_store import (
    DEFAULT_BATCH, get_collection, open_client, reconcile, self_retrieval_failures, writer_lock,
)
from nova_pipeline.resources import EmbedderResource, NovaSettings


@dg.asset(kinds={"python", "parquet"}, group_name="search")
def source_chunks(
    context: dg.AssetExecutionContext, nova: NovaSettings, embedder: EmbedderResource, source_files: pd.DataFrame
):
    """Code-aware chunks: ``chunk_id, path, start_line, end_line, symbol, language, content_blake3, n_tokens,
    truncated`` (plus ``file_blake3`` and the embedded ``text``). Unchanged files keep their chunks."""
    settings = nova.settings()
    tokenizer = embedder.tokenizer()
    previous = read_table(settings.home, "source_chunks")
    df, stats = chunk_manifest(settings.source_dir, source_files, previous, tokenizer.count,
                               tokenizer.max_seq_length)
    if stats.truncated:
        context.log.warning(f"{stats.truncated} chunks exceed {tokenizer.max_seq_length} word pieces: "
                            "the model sees only their start")
    by_language = df.groupby("language").agg(chunks=("chunk_id", "size"), tokens=("n_tokens", "sum"))
    return dg.MaterializeResult(
        value=df,
        metadata={
            "chunks": stats.chunks,
            "files_chunked": stats.files_chunked,
            "files_reused": stats.files_reused,
            "truncated": stats.truncated,
            "skipped_changed_since_scan": stats.skipped,
            "mean_tokens": round(float(df["n_tokens"].mean()), 1) if len(df) else 0.0,
            "max_tokens": tokenizer.max_seq_length,
            "by_language": dg.MetadataValue.md(by_language.reset_index().to_markdown(index=False)
                                               if len(df) else "_(empty)_"),
        },
    )


class VectorIndexConfig(dg.Config):
    """``batch_size``: chunks per batch; a killed run redoes at most one batch."""

    batch_size: int = DEFAULT_BATCH


@dg.asset(kinds={"chromadb"}, group_name="search", pool="vector_index_writer")
def vector_index(
    context: dg.AssetExecutionContext, config: VectorIndexConfig, nova: NovaSettings,
    embedder: EmbedderResource, source_chunks: pd.DataFrame,
):
    """A Chroma collection named after the model fingerprint, reconciled with ``source_chunks``.

    Upserts wanted chunks missing from Chroma (embedding only what the cache lacks), then deletes ids that
    are no longer wanted. Each batch is observed in the run's event log as it commits.
    """
    settings = nova.settings(require_source=False)
    model = embedder.get_embedder()
    cache = EmbeddingCache(settings.home, model.fingerprint)

    def on_batch(n, stats):
        context.log_event(dg.AssetObservation(
            asset_key=context.asset_key,
            metadata={"batch": n, "upserted": stats.upserted, "embedded": stats.embedded,
                      "cache_hits": stats.cache_hits},
        ))

    with writer_lock(settings.home):
        client = open_client(settings.home, settings.chroma_url)
        collection = get_collection(client, model.fingerprint)
        stats = reconcile(collection, source_chunks, model, cache, config.batch_size,
                          client.get_max_batch_size(), on_batch)
    cache.close()
    if stats.embedded == 0:
        context.log.info(f"no new text to embed: {stats.unchanged} chunks already indexed, "
                         f"{stats.cache_hits} from the cache")
    throughput = stats.embedded / stats.embed_seconds if stats.embed_seconds else 0.0
    return dg.MaterializeResult(
        metadata={
            "collection": collection.name,
            "model_fingerprint": model.fingerprint,
            "mode": "server " + settings.chroma_url if settings.chroma_url else "embedded",
            "vectors": stats.count_after,
            "chunks": stats.wanted,
            "unchanged": stats.unchanged,
            "upserted": stats.upserted,
            "embedded": stats.embedded,
            "cache_hits": stats.cache_hits,
            "deleted": stats.deleted,
            "batches": stats.batches,
            "embeddings_per_s": round(throughput, 1),
            "duration_s": round(stats.seconds, 2),
        },
    )


@dg.asset_check(asset=vector_index, blocking=True, description="The collection holds one vector per chunk.")
def vector_count_matches_chunks(nova: NovaSettings, embedder: EmbedderResource) -> dg.AssetCheckResult:
    settings = nova.settings(require_source=False)
    chunks = read_table(settings.home, "source_chunks")
    collection = get_collection(open_client(settings.home, settings.chroma_url), embedder.fingerprint(),
                                create=False)
    count, wanted = collection.count(), 0 if chunks is None else len(chunks)
    return dg.AssetCheckResult(
        passed=count == wanted, metadata={"vectors": count, "chunks": wanted},
        description=None if count == wanted else f"{collection.name} holds {count} vectors for {wanted} chunks",
    )


class SelfRetrievalConfig(dg.Config):
    """Chunks queried with their own embedding; each must be its own nearest neighbour."""

    sample_size: int = 25


@dg.asset_check(asset=vector_index, blocking=True,
                description="A sample of chunks each find themselves as the top-1 result.")
def chunks_find_themselves(
    config: SelfRetrievalConfig, nova: NovaSettings, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    settings = nova.settings(require_source=False)
    chunks = read_table(settings.home, "source_chunks")
    fingerprint = embedder.fingerprint()
    collection = get_collection(open_client(settings.home, settings.chroma_url), fingerprint, create=False)
    cache = EmbeddingCache(settings.home, fingerprint)
    checked, failures = self_retrieval_failures(collection, chunks if chunks is not None else pd.DataFrame(
        columns=["chunk_id"]), cache, config.sample_size)
    cache.close()
    return dg.AssetCheckResult(
        passed=not failures, metadata={"checked": checked, "failures": len(failures)},
        description="; ".join(failures[:3]) if failures else None,
    )

"""Assets and checks of the semantic index: source_chunks and vector_index."""

import sys
import time

import dagster as dg
import pandas as pd

from nova_pipeline.core.chunking import chunk_manifest
from nova_pipeline.core.embedding import EmbeddingCache
from nova_pipeline.core.failover import PRIMARY, ActiveStore, active_store
from nova_pipeline.core.tables import SOURCE_CHUNKS, read_table
from nova_pipeline.core.vector_store import (
    DEFAULT_BATCH,
    VerifiedRecord,
    collection_name,
    existing_ids,
    ids_digest,
    reconcile,
    self_retrieval_failures,
    store_state,
    writer_lock,
)
from nova_pipeline.defs.metadata import DAILY, md_table
from nova_pipeline.resources import DeletionGuardResource, EmbedderResource, NovaSettings
from nova_pipeline.run_events import DONE, PHASE, TOTAL, UNIT, progress_reporter


@dg.asset(kinds={"python", "parquet"}, group_name="index")
def source_chunks(
    context: dg.AssetExecutionContext,
    nova: NovaSettings,
    embedder: EmbedderResource,
    source_files: pd.DataFrame,
):
    """Code-aware chunks: ``chunk_id, path, start_line, end_line, symbol, language, content_blake3, n_tokens,
    truncated`` (plus ``file_blake3`` and the embedded ``text``). Unchanged files keep their chunks."""
    settings = nova.settings()
    tokenizer = embedder.tokenizer()
    previous = read_table(settings.layout, SOURCE_CHUNKS)  # this asset's last value
    df, stats = chunk_manifest(
        settings.source_dir,
        source_files,
        previous,
        tokenizer.count,
        tokenizer.max_seq_length,
        progress=progress_reporter(context, "chunk", "files"),
    )
    if stats.truncated:
        context.log.warning(
            f"{stats.truncated} chunks exceed {tokenizer.max_seq_length} word pieces: "
            "the model sees only their start"
        )
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
            "by_language": md_table(by_language.reset_index()),
        },
    )


class VectorIndexConfig(dg.Config):
    """``batch_size``: chunks per batch; a killed run redoes at most one batch."""

    batch_size: int = DEFAULT_BATCH


def _verification(settings, fingerprint: str, chunks: pd.DataFrame, store: ActiveStore):
    """``(record, digest, state)``: the verified-state record of the embedded collection, the chunk ids
    digest and the store state now (None in server mode or while failed over: always verify for real)."""
    digest = ids_digest(chunks["chunk_id"], fingerprint)
    primary_embedded = not settings.chroma_url and store.label == PRIMARY
    state = store_state(settings.home, fingerprint) if primary_embedded else None
    return VerifiedRecord(settings.home), digest, state


def _unchanged_since(rec: dict) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec["at"]))
    run = rec.get("run_id", "?")[:8]
    return f"unchanged since verified in run {run} at {at}: no write to the collection since"


@dg.asset(kinds={"chromadb"}, group_name="index", pool="vector_index_writer", freshness_policy=DAILY)
def vector_index(
    context: dg.AssetExecutionContext,
    config: VectorIndexConfig,
    nova: NovaSettings,
    embedder: EmbedderResource,
    guard: DeletionGuardResource,
    source_chunks: pd.DataFrame,
):
    """A Chroma collection named after the model fingerprint, reconciled with ``source_chunks``.

    Upserts wanted chunks missing from Chroma (embedding only what the cache lacks; the model is loaded
    only then), then deletes ids that are no longer wanted. Each batch is observed in the run's event log
    as it commits. Refuses, before writing, a run that would shrink the collection by a mass deletion.
    When the chunks are the same and nothing wrote to the (embedded) collection since this asset and both
    its checks last passed, Chroma is not even opened (:class:`VerifiedRecord`).
    """
    settings = nova.settings(require_source=False)
    model = embedder.get_embedder()
    store = active_store(settings.home, settings.chroma_url)
    verified, digest, state = _verification(settings, model.fingerprint, source_chunks, store)
    if verified.all_match(digest, state):
        rec = verified.matching("reconcile", digest, state)
        context.log.info(
            f"no new text to embed: {len(source_chunks)} chunks already indexed; {_unchanged_since(rec)}"
        )
        return dg.MaterializeResult(
            metadata={
                "collection": collection_name(model.fingerprint),
                "model_fingerprint": model.fingerprint,
                "mode": "embedded",
                "vectors": int(rec.get("count", len(source_chunks))),
                "chunks": len(source_chunks),
                "unchanged": len(source_chunks),
                "upserted": 0,
                "embedded": 0,
                "cache_hits": 0,
                "deleted": 0,
                "batches": 0,
                "verified": _unchanged_since(rec),
                "model_loaded": False,
                "model_load_s": 0.0,
                "torch_imported": "torch" in sys.modules,
                "duration_s": 0.0,
            }
        )
    cache = EmbeddingCache(settings.home, model.fingerprint)

    def on_batch(n, stats):
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                metadata={
                    "batch": n,
                    "upserted": stats.upserted,
                    "embedded": stats.embedded,
                    "cache_hits": stats.cache_hits,
                    # progress of the embed phase (nova rebuild's bar): chunks upserted of those to upsert
                    PHASE: "embed",
                    DONE: stats.upserted,
                    TOTAL: stats.to_upsert,
                    UNIT: "chunks",
                },
            )
        )

    loaded_before = getattr(model, "loaded", False)
    if store.journal is not None:
        context.log.warning(
            f"failed over since {store.state.since}: writing to the backup store and journaling "
            f"every write to {store.journal.dir} for the failback"
        )
    with writer_lock(settings.home):
        collection = store.collection(model.fingerprint)
        stats = reconcile(
            collection,
            source_chunks,
            model,
            cache,
            config.batch_size,
            store.client.get_max_batch_size(),
            on_batch,
            guard=guard.guard(),
        )
    cache.close()
    if store.label == PRIMARY and not settings.chroma_url:  # the embedded primary: its state is readable
        verified.record(
            "reconcile",
            digest,
            store_state(settings.home, model.fingerprint),
            context.run_id,
            count=stats.count_after,
        )
    if stats.embedded == 0:
        context.log.info(
            f"no new text to embed: {stats.unchanged} chunks already indexed, "
            f"{stats.cache_hits} from the cache"
        )
    throughput = stats.embedded / stats.embed_seconds if stats.embed_seconds else 0.0
    return dg.MaterializeResult(
        metadata={
            "collection": collection.name,
            "model_fingerprint": model.fingerprint,
            "mode": (
                "backup (failed over; journaled)"
                if store.journal is not None
                else "server " + settings.chroma_url
                if settings.chroma_url
                else "embedded"
            ),
            "vectors": stats.count_after,
            "chunks": stats.wanted,
            "unchanged": stats.unchanged,
            "upserted": stats.upserted,
            "embedded": stats.embedded,
            "cache_hits": stats.cache_hits,
            "deleted": stats.deleted,
            "batches": stats.batches,
            "embeddings_per_s": round(throughput, 1),
            "verified": "reconciled against the collection's ids now",
            # the model loads only when a text must be embedded; in a fresh process, torch stays unimported
            "model_loaded": bool(getattr(model, "loaded", True)) and not loaded_before,
            "model_load_s": 0.0 if loaded_before else round(float(getattr(model, "load_seconds", 0.0)), 2),
            "torch_imported": "torch" in sys.modules,
            "duration_s": round(stats.seconds, 2),
        },
    )


_CHUNKS_IN = {"source_chunks": dg.AssetIn(SOURCE_CHUNKS)}


@dg.asset_check(
    asset=vector_index,
    blocking=True,
    additional_ins=_CHUNKS_IN,
    description="The collection holds one vector per chunk.",
)
def vector_count_matches_chunks(
    context: dg.AssetCheckExecutionContext,
    nova: NovaSettings,
    embedder: EmbedderResource,
    source_chunks: pd.DataFrame,
) -> dg.AssetCheckResult:
    settings = nova.settings(require_source=False)
    chunks = source_chunks
    fingerprint = embedder.fingerprint()
    store = active_store(settings.home, settings.chroma_url)
    verified, digest, state = _verification(settings, fingerprint, chunks, store)
    rec = verified.matching("vector_count_matches_chunks", digest, state)
    if rec is not None:
        return dg.AssetCheckResult(
            passed=True,
            metadata={"vectors": rec["count"], "chunks": rec["count"], "verified": _unchanged_since(rec)},
        )
    collection = store.collection(fingerprint, create=False)
    count, wanted = collection.count(), len(chunks)
    if count == wanted:
        verified.record("vector_count_matches_chunks", digest, state, context.run.run_id, count=count)
        return dg.AssetCheckResult(
            passed=True, metadata={"vectors": count, "chunks": wanted, "verified": "counted now"}
        )
    have = existing_ids(collection)
    missing = chunks[~chunks["chunk_id"].isin(have)]
    extra = sorted(have - set(chunks["chunk_id"]))
    named = [
        f"{r.path}:{r.start_line}-{r.end_line} ({r.chunk_id}) has no vector"
        for r in missing.head(3).itertuples()
    ]
    named += [f"vector {i} is no chunk's" for i in extra[:3]]
    return dg.AssetCheckResult(
        passed=False,
        metadata={
            "vectors": count,
            "chunks": wanted,
            "missing": len(missing),
            "extra": len(extra),
            "verified": "counted now",
        },
        description=f"{collection.name} holds {count} vectors for {wanted} chunks: " + "; ".join(named),
    )


class SelfRetrievalConfig(dg.Config):
    """Chunks queried with their own embedding; each must be its own nearest neighbour."""

    sample_size: int = 25


@dg.asset_check(
    asset=vector_index,
    blocking=True,
    additional_ins=_CHUNKS_IN,
    description="A sample of chunks each find themselves as the top-1 result.",
)
def chunks_find_themselves(
    context: dg.AssetCheckExecutionContext,
    config: SelfRetrievalConfig,
    nova: NovaSettings,
    embedder: EmbedderResource,
    source_chunks: pd.DataFrame,
) -> dg.AssetCheckResult:
    settings = nova.settings(require_source=False)
    chunks = source_chunks
    fingerprint = embedder.fingerprint()
    store = active_store(settings.home, settings.chroma_url)
    verified, digest, state = _verification(settings, fingerprint, chunks, store)
    rec = verified.matching("chunks_find_themselves", digest, state)
    if rec is not None:
        return dg.AssetCheckResult(
            passed=True,
            metadata={"checked": rec["checked"], "failures": 0, "verified": _unchanged_since(rec)},
        )
    collection = store.collection(fingerprint, create=False)
    cache = EmbeddingCache(settings.home, fingerprint)
    checked, failures = self_retrieval_failures(collection, chunks, cache, config.sample_size)
    cache.close()
    if not failures:
        verified.record("chunks_find_themselves", digest, state, context.run.run_id, checked=checked)
    return dg.AssetCheckResult(
        passed=not failures,
        metadata={"checked": checked, "failures": len(failures), "verified": "queried now"},
        description="; ".join(failures[:3]) if failures else None,
    )

"""The ``vector_index`` asset: a graph of ops (plan the slices, reconcile each, finish) and its two
blocking checks, which run in its last op. Logic: :mod:`nova_pipeline.core.index.reconcile` and
:mod:`nova_pipeline.core.index.verification`.

Downstream assets read ``source_chunks`` from its table (``deps``); writers take the locks of
:mod:`nova_pipeline.core.locks`.
"""

import dataclasses
import os
import socket
import sys
import time

import dagster as dg
import pandas as pd

from nova_pipeline.core.errors import SettingsError, VectorStoreError
from nova_pipeline.core.index.chunking import META_COLUMNS, read_texts
from nova_pipeline.core.index.embedding_cache import EmbeddingCache
from nova_pipeline.core.index.reconcile import reconcile
from nova_pipeline.core.index.vector_store import (
    BUCKETS,
    DEFAULT_BATCH,
    collection_name,
    existing_ids,
    get_collection,
    is_complete,
    mark_complete,
    other_schema_collection,
    retire_other_schema,
    slice_buckets,
)
from nova_pipeline.core.index.verification import (
    VerifiedRecord,
    ids_digest,
    store_state,
)
from nova_pipeline.core.keys import INDEX, LEXICAL_INDEX, SOURCE_CHUNKS, VECTOR_INDEX
from nova_pipeline.core.serving.failover import ActiveStore, active_client, active_store, writing_to
from nova_pipeline.core.serving.pointer import PRIMARY
from nova_pipeline.core.tables import memo, require_table, row_count
from nova_pipeline.defs.index.checks import (
    CHECK_NAMES,
    COUNT_CHECK,
    SELF_CHECK,
    chunks_find_themselves,
    vector_count_matches_chunks,
)
from nova_pipeline.defs.metadata import DAILY, md_table
from nova_pipeline.defs.resources import (
    DeletionGuardResource,
    EmbedderResource,
    NovaSettings,
    SharedPrimaryView,
)
from nova_pipeline.deploy.run_events import DONE, PART, PHASE, TOTAL, UNIT


class VectorIndexConfig(dg.Config):
    """``batch_size``: chunks per batch (a killed run redoes at most the batches in flight); ``slices``: how
    many steps share the embedding, each reconciling its own buckets of the collection (1, the default, is
    one step over the whole collection; set ``NOVA_INDEX_SLICES`` or this field to spread the work over the
    executor's workers); ``self_retrieval_sample``: chunks that ``chunks_find_themselves`` queries with
    their own embedding."""

    batch_size: int = DEFAULT_BATCH
    slices: int = 0  # 0: NOVA_INDEX_SLICES when the run starts, else 1
    self_retrieval_sample: int = 25


def resolve_slices(slices: int, env=None) -> int:
    """The slices of a run: ``slices`` when it is set (> 0), else ``NOVA_INDEX_SLICES``, else 1; at most
    :data:`BUCKETS`.

    Raises:
        SettingsError: ``NOVA_INDEX_SLICES`` is not a whole number.
    """
    if slices <= 0:
        raw = ((os.environ if env is None else env).get("NOVA_INDEX_SLICES") or "1").strip()
        try:
            slices = int(raw)
        except ValueError:
            raise SettingsError(f"NOVA_INDEX_SLICES={raw!r} is not a whole number of slices") from None
    return max(1, min(BUCKETS, slices))


@dg.config_mapping
def _vector_index_config(config: VectorIndexConfig) -> dict:
    """The asset's one config block (``ops: {vector_index: {config: {...}}}``), handed to its planning op."""
    return {"plan_vector_slices": {"config": config.model_dump()}}


def _verification(settings, fingerprint: str, chunks: pd.DataFrame | None, store: ActiveStore):
    """``(record, digest, state)``: the verified-state record of the embedded collection, the chunk ids
    digest and the store state now (None in server mode or while failed over: always verify for real).

    ``chunks`` None: the digest of the ``source_chunks`` table's ids, computed once per version of the table
    (:func:`~nova_pipeline.core.tables.memo`; an unchanged run reads no chunk)."""
    if chunks is None:
        digest = memo(
            settings.layout,
            SOURCE_CHUNKS,
            f"ids_digest/{fingerprint}",
            lambda: ids_digest(
                require_table(settings.layout, SOURCE_CHUNKS, columns=["chunk_id"])["chunk_id"], fingerprint
            ),
        )
    else:
        digest = ids_digest(chunks["chunk_id"], fingerprint)
    primary_embedded = not settings.chroma_url and store.label == PRIMARY
    state = store_state(settings.home, fingerprint) if primary_embedded else None
    return VerifiedRecord(settings.home), digest, state


def _unchanged_since(rec: dict) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec["at"]))
    run = rec.get("run_id", "?")[:8]
    return f"unchanged since verified in run {run} at {at}: no write to the collection since"


_STEP_OUT = "step_io_manager"


@dg.op(
    ins={SOURCE_CHUNKS: dg.In(dg.Nothing), LEXICAL_INDEX: dg.In(dg.Nothing)},
    out={
        "plan": dg.Out(dict, io_manager_key=_STEP_OUT),
        "slices": dg.DynamicOut(dict, io_manager_key=_STEP_OUT),
    },
)
def plan_vector_slices(
    context: dg.OpExecutionContext,
    config: VectorIndexConfig,
    nova: NovaSettings,
    embedder: EmbedderResource,
    guard: DeletionGuardResource,
):
    """Decide the slices of this run: none when the verified-state record says the collection already holds
    exactly these chunks (Chroma is not opened), else ``slices`` tasks. The mass-deletion guard runs here,
    on the whole collection, before any slice writes."""
    settings = nova.settings(require_source=False)
    fingerprint = embedder.fingerprint()
    store = active_store(settings.home, settings.chroma_url)
    verified, digest, state = _verification(settings, fingerprint, None, store)
    if verified.all_match(digest, state):
        yield dg.Output(
            {
                "verified": verified.matching("reconcile", digest, state),
                "checks": {c: verified.matching(c, digest, state) for c in CHECK_NAMES},
            },
            "plan",
        )
        return
    source_chunks = require_table(settings.layout, SOURCE_CHUNKS, columns=["chunk_id"])
    name = collection_name(fingerprint)
    present = verified.count_at(state)  # nothing wrote since the last reconcile: its count, Chroma unopened
    if present is None:
        with active_client(settings.home, settings.chroma_url) as client:
            collection = get_collection(client, fingerprint)
            try:
                present = collection.count()
            except Exception as exc:  # noqa: BLE001 - whatever the store raised, the run stops here
                raise VectorStoreError(f"cannot count the collection {name}: {exc}") from exc
    guard.guard().check_vectors(present, len(source_chunks), name)
    n = resolve_slices(config.slices)
    yield dg.Output(
        {
            "verified": None,
            "slices": n,
            "present_before": present,
            "self_retrieval_sample": config.self_retrieval_sample,
        },
        "plan",
    )
    for i in range(n):
        task = {
            "index": i,
            "slices": n,
            "batch_size": config.batch_size,
            "buckets": None if n == 1 else slice_buckets(i, n),
        }
        yield dg.DynamicOutput(task, mapping_key=f"slice_{i}", output_name="slices")


@dg.op(out=dg.Out(dict, io_manager_key=_STEP_OUT), pool="vector_index_writer")
def reconcile_vector_slice(
    context: dg.OpExecutionContext,
    nova: NovaSettings,
    embedder: EmbedderResource,
    shared_view: SharedPrimaryView,  # the primary's view, kept for the later steps in this process
    task: dict,
) -> dict:
    """Reconcile one slice: its buckets' vectors in the collection against its buckets' chunks (upsert what
    is missing, embedding only what the cache lacks; delete its own stale vectors). Each committed batch is
    observed in the run's event log. Returns the slice's :class:`IndexStats` as a dict."""
    settings = nova.settings(require_source=False)
    source_chunks = require_table(settings.layout, SOURCE_CHUNKS, columns=META_COLUMNS)  # texts: as needed
    model = embedder.get_embedder()

    part = f"{task['index'] + 1}/{task['slices']}"

    def on_batch(n, stats):
        context.log_event(
            dg.AssetObservation(
                asset_key=VECTOR_INDEX,
                metadata={
                    "slice": part,
                    "batch": n,
                    "upserted": stats.upserted,
                    "embedded": stats.embedded,
                    "cache_hits": stats.cache_hits,
                    # progress of the embed phase (nova rebuild's bar sums the slices)
                    PHASE: "embed",
                    PART: part,
                    DONE: stats.upserted,
                    TOTAL: stats.to_upsert,
                    UNIT: "chunks",
                },
            )
        )

    loaded_before = getattr(model, "loaded", False)
    cache = EmbeddingCache(settings.home, model.fingerprint)
    try:
        # the lock first, then the pointer: a failover or failback cannot flip the store under this writer
        with writing_to(settings.home, settings.chroma_url, task["buckets"]) as store:
            if store.journal is not None:
                context.log.warning(
                    f"failed over since {store.state.since}: writing to the backup store and journaling "
                    f"every write to {store.journal.dir} for the failback"
                )
            collection = store.collection(model.fingerprint)
            known = None  # the embedded primary's ids, when nothing wrote to it since the last reconcile
            if task["buckets"] is None and store.label == PRIMARY and not settings.chroma_url:
                known = VerifiedRecord(settings.home).ids_at(store_state(settings.home, model.fingerprint))
            stats = reconcile(
                collection,
                source_chunks,
                model,
                cache,
                task["batch_size"],
                store.client.get_max_batch_size(),
                on_batch,
                buckets=task["buckets"],
                seed=other_schema_collection(store.client, model.fingerprint),  # a schema change: copy
                have=known,
                texts_of=lambda ids: read_texts(settings.layout, source_chunks, ids),
            )
    finally:
        cache.close()
    context.log.info(
        f"slice {part}: {stats.wanted} chunks, {stats.unchanged} unchanged, upserted {stats.upserted} "
        f"({stats.embedded} embedded, {stats.cache_hits} from the cache), deleted {stats.deleted}"
    )
    return {
        **dataclasses.asdict(stats),
        "slice": part,
        "model_loaded": bool(getattr(model, "loaded", True)) and not loaded_before,
        "model_load_s": 0.0 if loaded_before else float(getattr(model, "load_seconds", 0.0)),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


@dg.op(
    out={
        "result": dg.Out(dg.Nothing),  # nothing reads the asset's value: its downstream assets use deps
        # the graph asset's check outputs come from this op (they carry no value)
        **{
            spec.get_python_identifier(): dg.Out(dg.Nothing, is_required=False)
            for spec in (COUNT_CHECK, SELF_CHECK)
        },
    }
)
def finish_vector_index(
    context: dg.OpExecutionContext,
    nova: NovaSettings,
    embedder: EmbedderResource,
    shared_view: SharedPrimaryView,  # the view the reconcile wrote through, when it ran in this process
    plan: dict,
    results: list[dict],
):
    """Close the run: with slices, delete what no slice owns (vectors with no bucket, written before
    buckets existed, whose chunks are gone); count the collection; evaluate the asset's two checks; record
    the verified state; report. Unchanged (the plan found every record matching): no store is opened and
    the checks report the runs that verified them."""
    settings = nova.settings(require_source=False)
    unchanged = plan.get("verified") is not None
    fingerprint = embedder.fingerprint()
    name = collection_name(fingerprint)
    if unchanged:  # only the count is reported, from the table's footer
        rec, checks = plan["verified"], plan["checks"]
        n_chunks = row_count(settings.layout, SOURCE_CHUNKS) or 0
        context.log.info(f"no new text to embed: {n_chunks} chunks already indexed; {_unchanged_since(rec)}")
        yield dg.Output(
            None,
            "result",
            metadata={
                "collection": name,
                "model_fingerprint": fingerprint,
                "mode": "embedded",
                "vectors": int(rec.get("count", n_chunks)),
                "chunks": n_chunks,
                "unchanged": n_chunks,
                "upserted": 0,
                "embedded": 0,
                "cache_hits": 0,
                "deleted": 0,
                "batches": 0,
                "slices": 0,
                "verified": _unchanged_since(rec),
                "model_loaded": False,
                "model_load_s": 0.0,
                "torch_imported": "torch" in sys.modules,
                "duration_s": 0.0,
            },
        )
        count_rec, self_rec = checks[COUNT_CHECK.name], checks[SELF_CHECK.name]
        yield dg.AssetCheckResult(
            check_name=COUNT_CHECK.name,
            passed=True,
            metadata={
                "vectors": count_rec["count"],
                "chunks": count_rec["count"],
                "verified": _unchanged_since(count_rec),
            },
        )
        yield dg.AssetCheckResult(
            check_name=SELF_CHECK.name,
            passed=True,
            metadata={"checked": self_rec["checked"], "failures": 0, "verified": _unchanged_since(self_rec)},
        )
        return
    # the checks name chunks by path and lines (no texts)
    source_chunks = require_table(settings.layout, SOURCE_CHUNKS, columns=META_COLUMNS)
    started = time.perf_counter()
    store = active_store(settings.home, settings.chroma_url)  # which store, and its journal
    swept = 0
    if plan["slices"] > 1:
        with writing_to(settings.home, settings.chroma_url) as writer:
            col = writer.collection(fingerprint)
            if col.count() != len(source_chunks):
                stale = sorted(existing_ids(col) - set(source_chunks["chunk_id"]))
                for i in range(0, len(stale), DEFAULT_BATCH):
                    col.delete(ids=stale[i : i + DEFAULT_BATCH])
                swept = len(stale)
        if swept:
            context.log.info(f"deleted {swept} stale vectors that no slice owned (written before buckets)")
    with active_client(settings.home, settings.chroma_url) as client:  # a view opened after every write
        collection = get_collection(client, fingerprint)
        count = collection.count()
        switching = not is_complete(collection) or other_schema_collection(client, fingerprint) is not None
        yield from _finish(
            context,
            settings,
            fingerprint,
            name,
            plan,
            results,
            source_chunks,
            store,
            collection,
            count,
            swept,
            started,
        )
    if switching and count == len(source_chunks):
        # a record-schema change (or a sliced first build) is complete: readers switch, the old one goes
        with writing_to(settings.home, settings.chroma_url) as writer:
            mark_complete(writer.collection(fingerprint))
            retired = retire_other_schema(writer.client, fingerprint)
        if retired:
            context.log.info(f"{name} holds every chunk: readers switched to it and {retired} was dropped")


def _finish(
    context,
    settings,
    fingerprint,
    name,
    plan,
    results,
    source_chunks,
    store,
    collection,
    count,
    swept,
    started,
):
    """The rest of :func:`finish_vector_index`, on an open collection: record, report, check."""
    verified, digest, state = _verification(settings, fingerprint, None, store)  # the plan's, kept
    if store.label == PRIMARY and not settings.chroma_url:  # the embedded primary: its state is readable
        verified.record("reconcile", digest, state, context.run_id, count=count)
        if count == len(source_chunks):  # the reconcile made the ids exact; the count agrees
            verified.record_ids(source_chunks["chunk_id"], state)
    total = {
        k: sum(r[k] for r in results)
        for k in (
            "unchanged",
            "upserted",
            "embedded",
            "cache_hits",
            "copied",
            "deleted",
            "batches",
            "embed_seconds",
        )
    }
    if total["embedded"] == 0:
        context.log.info(
            f"no new text to embed: {total['unchanged']} chunks already indexed, "
            f"{total['cache_hits']} from the cache"
        )
    wall = max((r["seconds"] for r in results), default=0.0) + (time.perf_counter() - started)
    workers = sorted({f"{r['host']}:{r['pid']}" for r in results})
    by_slice = pd.DataFrame(
        [
            {
                k: r[k]
                for k in (
                    "slice",
                    "wanted",
                    "upserted",
                    "embedded",
                    "cache_hits",
                    "deleted",
                    "seconds",
                    "host",
                    "pid",
                )
            }
            for r in results
        ]
    )
    yield dg.Output(
        None,
        "result",
        metadata={
            "collection": name,
            "model_fingerprint": fingerprint,
            "mode": (
                "backup (failed over; journaled)"
                if store.journal is not None
                else "server " + settings.chroma_url
                if settings.chroma_url
                else "embedded"
            ),
            "vectors": count,
            "chunks": len(source_chunks),
            **{k: v for k, v in total.items() if k != "embed_seconds"},
            "deleted": total["deleted"] + swept,
            "slices": len(results),
            "workers": len(workers),
            "by_slice": md_table(by_slice.round({"seconds": 2})) if len(results) > 1 else "one slice",
            "embeddings_per_s": round(total["embedded"] / total["embed_seconds"], 1)
            if total["embed_seconds"]
            else 0.0,
            "verified": "reconciled against the collection's ids now",
            # the model loads only when a text must be embedded; in a fresh process, torch stays unimported
            "model_loaded": any(r["model_loaded"] for r in results),
            "model_load_s": round(max((r["model_load_s"] for r in results), default=0.0), 2),
            "torch_imported": "torch" in sys.modules,
            "duration_s": round(wall, 2),
        },
    )
    yield vector_count_matches_chunks(collection, source_chunks, verified, digest, state, context.run_id)
    yield chunks_find_themselves(
        collection,
        source_chunks,
        settings.home,
        fingerprint,
        plan["self_retrieval_sample"],
        verified,
        digest,
        state,
        context.run_id,
    )


@dg.graph_asset(
    kinds={"chromadb"},
    group_name=INDEX,
    # after the lexical index: it is the document table slim vector records are read with, so a new
    # vector never lacks its document
    ins={
        SOURCE_CHUNKS: dg.AssetIn(SOURCE_CHUNKS, dagster_type=dg.Nothing),
        LEXICAL_INDEX: dg.AssetIn(LEXICAL_INDEX, dagster_type=dg.Nothing),
    },
    config=_vector_index_config,
    check_specs=[COUNT_CHECK, SELF_CHECK],
    description="""A Chroma collection named after the model fingerprint, reconciled with ``source_chunks``.

Upserts wanted chunks missing from Chroma (embedding only what the cache lacks; the model is loaded only
then), then deletes ids that are no longer wanted. The work is split into ``slices`` steps, each owning
fixed buckets of chunk ids (a ``bucket`` metadata field, selected with a ``where`` filter), so an executor
with several workers (multiprocess, Celery) embeds in parallel while no slice touches another's vectors.
Each batch is observed in the run's event log as it commits. Refuses, before writing, a run that would
shrink the collection by a mass deletion. Its two blocking checks run in the last step. When the chunks are
the same and nothing wrote to the (embedded) collection since this asset and both its checks last passed,
Chroma is not even opened.""",
)
def vector_index(source_chunks, lexical_index):
    plan, slices = plan_vector_slices(source_chunks=source_chunks, lexical_index=lexical_index)
    results = slices.map(reconcile_vector_slice).collect()
    result, count_check, self_check = finish_vector_index(plan, results)
    return {
        "result": result,
        COUNT_CHECK.get_python_identifier(): count_check,
        SELF_CHECK.get_python_identifier(): self_check,
    }


vector_index = vector_index.map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=DAILY))

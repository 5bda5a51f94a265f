"""The ``index`` group's ``source_chunks`` (code-aware chunks) and ``lexical_index`` (BM25, with its check).

Logic: :mod:`nova_pipeline.core.index.chunking` and :mod:`nova_pipeline.core.index.lexical`. Each asset's
check runs inside its step (``check_specs``); downstream assets read the chunks from their table (``deps``).
"""

import time

import dagster as dg

from nova_pipeline.core.index import lexical, lexical_delta
from nova_pipeline.core.index.chunking import (
    CHUNKER_VERSION,
    META_COLUMNS,
    chunk_manifest,
    manifest_key,
    read_texts,
)
from nova_pipeline.core.keys import INDEX, LEXICAL_INDEX, SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.tables import identity, read_table, require_table, table_attrs
from nova_pipeline.defs.metadata import last_metadata, md_table
from nova_pipeline.defs.resources import EmbedderResource, NovaSettings
from nova_pipeline.deploy.run_events import progress_reporter


@dg.asset(kinds={"python", "parquet"}, group_name=INDEX, deps=[SOURCE_FILES])
def source_chunks(context: dg.AssetExecutionContext, nova: NovaSettings, embedder: EmbedderResource):
    """Code-aware chunks: ``chunk_id, path, start_line, end_line, symbol, language, content_blake3, n_tokens,
    truncated`` (plus ``file_blake3`` and the embedded ``text``). Unchanged files keep their chunks."""
    settings = nova.settings()
    source_files = require_table(settings.layout, SOURCE_FILES)
    tokenizer = embedder.tokenizer()
    meta = last_metadata(context)
    key = manifest_key(source_files, tokenizer.max_seq_length)
    held = identity(settings.layout, SOURCE_CHUNKS)
    if _still_holds(meta, key, held):
        # the table this asset last wrote is still there, made from the same files: not read (its texts are
        # most of an unchanged rebuild's reading: 0.9 s at 3,000 files, and it grows with the tree)
        context.log.info("no file changed since the last chunks: the table holds")
        reused = int(meta["files_chunked"]) + int(meta["files_reused"])
        return dg.MaterializeResult(
            value=None,  # the IO manager writes nothing: the table keeps its version
            metadata={**meta, "files_chunked": 0, "files_reused": reused, "unchanged": True},
        )
    previous = read_table(settings.layout, SOURCE_CHUNKS)  # this asset's last value
    # the chunker that made it, from the table's own footer: a new Dagster instance (or run storage moved
    # to Postgres) has no last materialization, and re-chunked all 30,000 files of bench_scale's tier for it
    # (490 s). A table written before the footer held it falls back to the instance's memory.
    last_chunker = (table_attrs(settings.layout, SOURCE_CHUNKS) or {}).get("chunker") or meta.get("chunker")
    if previous is not None and last_chunker != CHUNKER_VERSION:
        context.log.info(
            f"the chunker changed ({last_chunker or 'unknown'} -> {CHUNKER_VERSION}): every file is chunked "
            "again (texts that did not change keep their cached embeddings)"
        )
        previous = None
    df, stats = chunk_manifest(
        settings.source_dir,
        source_files,
        previous,
        tokenizer.count,
        tokenizer.max_seq_length,
        progress=progress_reporter(context, "chunk", "files"),
        lines_add_up=tokenizer.lines_add_up,  # asked only if a file is chunked
    )
    if stats.truncated_new:  # chunks reused from the last run were reported when they were made
        context.log.warning(
            f"{stats.truncated_new} new chunks exceed {tokenizer.max_seq_length} word pieces: the model sees "
            f"only their start ({stats.truncated} such chunks in all)"
        )
    df.attrs = {"chunker": CHUNKER_VERSION}  # kept in the table's footer by the IO manager (write_table)
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
            "chunker": CHUNKER_VERSION,
            "by_language": md_table(by_language.reset_index()),
            "manifest_key": key,
            "unchanged": False,
        },
    )


def _still_holds(meta: dict, key: str, held: str | None) -> bool:
    """Whether the last materialization's table is current: written by it (its identity, which the IO
    manager records), from a manifest with the same :func:`manifest_key`, with no file skipped (a skipped file
    is tried again), by this chunker."""
    return (
        held is not None
        and meta.get("table_identity") == held
        and meta.get("manifest_key") == key
        and meta.get("chunker") == CHUNKER_VERSION
        and meta.get("skipped_changed_since_scan") == 0
    )


LEXICAL_CHECK = dg.AssetCheckSpec(
    "lexical_index_matches_chunks",
    asset=LEXICAL_INDEX,
    blocking=True,
    description="The live lexical index holds exactly the chunk ids of source_chunks.",
)


class LexicalIndexConfig(dg.Config):
    """``compact_above``: added documents beyond which the base is rebuilt instead of a delta written (a
    delta is also never more than a tenth of the base's documents; 0: rebuild the base now, folding the
    delta in)."""

    compact_above: int = lexical_delta.COMPACT_ABOVE


@dg.asset(
    kinds={"python", "bm25s"},
    group_name=INDEX,
    deps=[SOURCE_CHUNKS],
    check_specs=[LEXICAL_CHECK],
)
def lexical_index(context: dg.AssetExecutionContext, config: LexicalIndexConfig, nova: NovaSettings):
    """The BM25 index of the chunks under ``NOVA_HOME/lexical/`` (core/index/lexical.py): the lexical side of
    hybrid search. Content-addressed by the chunk set: an unchanged set does no work; a small change is a
    delta beside the built base (core/index/lexical_delta.py: only the changed chunks' texts are read); a
    larger one (``compact_above``) builds a new base beside the live one and switches to it atomically. Its
    check runs in the same step."""
    from nova_pipeline.core.locks import writer_lock

    started = time.perf_counter()
    home = nova.settings(require_source=False).home
    digest = lexical.kept_digest(home)  # once per version of the chunks table: an unchanged run reads none
    with writer_lock(home, bump=False):  # nova watch writes the same delta (core/locks.py)
        if lexical_delta.holds(home, digest, with_delta=config.compact_above > 0):  # 0: fold the delta in
            check = lexical_index_matches_chunks(home)  # kept by the run that made these inputs
            context.log.info(f"lexical index {digest[:12]}: unchanged: no work")
            return dg.MaterializeResult(
                metadata={  # the last materialization's counts: the same index
                    **last_metadata(context),
                    "documents": check.metadata["documents"].value,
                    "vocabulary": lexical.base_vocabulary(home),  # from the index: a new instance has none
                    "how": "unchanged",
                    "built": False,
                    "digest": digest,
                    "duration_s": round(time.perf_counter() - started, 3),
                },
                check_results=[check],
            )
        source_chunks = require_table(home, SOURCE_CHUNKS, columns=META_COLUMNS)
        a = lexical_delta.apply(
            home,
            source_chunks,
            texts_of=lambda ids: read_texts(home, source_chunks, ids),
            # only what a build reads: the two digests and the flags would be 7 % of the table's memory
            with_texts=lambda: require_table(home, SOURCE_CHUNKS, columns=[*lexical.DOC_COLUMNS, "text"]),
            compact_above=config.compact_above,
            # this version's digest: the table cannot change under the writer lock, so the memo's answer
            # (computed above, outside the lock, for the version then) is read, or computed once
            digest=lexical.kept_digest(home),
        )
        check = lexical_index_matches_chunks(home)  # kept for the next unchanged run
    context.log.info(
        f"lexical index {a.digest[:12]}: {a.docs:,} documents, "
        + {
            "unchanged": "unchanged: no work",
            "delta": f"a delta of +{a.added:,} -{a.removed:,} documents against base {a.base[:12]}",
            "built": f"{a.vocabulary:,} terms, built in {a.seconds:.2f} s",
        }[a.how]
    )
    return dg.MaterializeResult(
        metadata={
            "documents": a.docs,
            "vocabulary": a.vocabulary,
            "built": a.how == "built",
            "how": a.how,
            "digest": a.digest,
            "base": a.base,
            "delta_added": a.added,
            "delta_removed": a.removed,
            "path": dg.MetadataValue.path(str(a.path)),
            "tokenizer": lexical.TOKENIZER_VERSION,
            "duration_s": round(a.seconds, 3),
        },
        check_results=[check],
    )


def lexical_index_matches_chunks(home) -> dg.AssetCheckResult:
    """The live lexical index under ``home`` (its base and delta) against the chunks table: fails naming ids
    missing or extra. Computed once per version of the table, the index's document table and the delta
    (:func:`~nova_pipeline.core.index.lexical_delta.kept_id_failures`), by the run that made them, so that
    the next unchanged run reads the answer: at 100,000 files (3.5 million chunks) the first unchanged run
    after a change spent 4.6 s on it. Call it under the writer lock."""
    return _check_result(*lexical_delta.kept_id_failures(home))


def _check_result(failures: list[str], documents: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=LEXICAL_CHECK.name,
        passed=not failures,
        metadata={"documents": documents, "failures": len(failures)},
        description="; ".join(failures) or None,
    )

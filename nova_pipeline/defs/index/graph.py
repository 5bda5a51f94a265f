"""The ``index`` group's ``code_graph``: symbols and their relations (calls, imports, bases, contents,
document links). Logic: :mod:`nova_pipeline.core.index.graph`."""

import functools

import dagster as dg

from nova_pipeline.core.index import graph
from nova_pipeline.core.keys import INDEX, SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.tables import memo, read_arrow, read_table, require_table, table_path, write_table
from nova_pipeline.defs.metadata import last_metadata
from nova_pipeline.defs.resources import NovaSettings
from nova_pipeline.deploy.run_events import progress_reporter


@dg.asset(kinds={"python", "parquet"}, group_name=INDEX, deps=[SOURCE_FILES, SOURCE_CHUNKS])
def code_graph(context: dg.AssetExecutionContext, nova: NovaSettings):
    """The code graph as three tables under ``NOVA_HOME/tables``: ``code_symbols``, ``code_relations`` and
    ``code_names`` (core/index/graph.py gives their columns). Only files whose blake3 changed are parsed
    again; names are resolved over the whole tree each time a file or chunk changed, and nothing is done
    when none did (the digest of its inputs is the last materialization's)."""
    settings = nova.settings()
    layout = settings.layout
    manifest = require_table(layout, SOURCE_FILES)
    meta = last_metadata(context)
    same_version = meta.get("graph_version") == graph.GRAPH_VERSION
    have_tables = all(table_path(layout, t).exists() for t in graph.TABLES)
    # the chunks' part of the digest, once per version of their table (an unchanged run reads none of it:
    # reading and hashing the spans took 0.54 s of an unchanged run at 10,000 files)
    spans_table = functools.cache(lambda: read_table(layout, SOURCE_CHUNKS, columns=graph.SPAN_COLUMNS))
    spans = memo(layout, SOURCE_CHUNKS, "graph.chunk_spans", lambda: graph.chunk_spans_digest(spans_table()))
    digest = graph.inputs_digest(settings.source_dir, manifest, spans)
    if have_tables and same_version and meta.get("inputs_digest") == digest:
        # decided before the tables are read: reading them is most of an unchanged run's cost (0.59 s of
        # 0.71 s at 3,000 files, growing with the relations)
        context.log.info("no file or chunk changed since the last code graph: no work")
        return dg.MaterializeResult(
            metadata={
                **meta,
                "files_parsed": 0,
                "files_reused": int(meta["files_parsed"]) + int(meta["files_reused"]),
                "unchanged": True,
            }
        )
    chunks = spans_table()  # read once: by the digest when the memo was stale
    # as Arrow tables: build_graph drops the changed files' rows before pandas sees them
    tables = [read_arrow(layout, t) for t in graph.TABLES] if have_tables and same_version else []
    previous = tuple(tables) if tables and all(t is not None for t in tables) else None
    symbols, relations, names, stats = graph.build_graph(
        settings.source_dir, manifest, chunks, previous, progress=progress_reporter(context, "graph", "files")
    )
    for name, table in zip(graph.TABLES, (symbols, relations, names)):
        write_table(layout, name, table)
    if stats.skipped:
        context.log.warning(
            f"{len(stats.skipped)} files not in the code graph: "
            + "; ".join(f"{p}: {why}" for p, why in list(stats.skipped.items())[:10])
        )
    return dg.MaterializeResult(
        metadata={
            "symbols": stats.symbols,
            "relations": stats.relations,
            "calls": stats.calls,
            "calls_resolved": stats.resolved_calls,
            "calls_kept": stats.calls_kept,
            "files_parsed": stats.files_parsed,
            "files_reused": stats.files_reused,
            "files_skipped": len(stats.skipped),
            "graph_version": graph.GRAPH_VERSION,
            "inputs_digest": digest,
            "unchanged": False,
        }
    )

"""The ``index`` group's ``code_graph``: symbols and their relations (calls, imports, bases, contents,
document links). Logic: :mod:`nova_pipeline.core.index.graph`."""

import functools

import dagster as dg

from nova_pipeline.core.index import graph
from nova_pipeline.core.keys import INDEX, SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.tables import memo, read_arrow, read_table, require_table
from nova_pipeline.defs.metadata import last_metadata
from nova_pipeline.defs.resources import NovaSettings
from nova_pipeline.deploy.run_events import progress_reporter


@dg.asset(kinds={"python", "parquet"}, group_name=INDEX, deps=[SOURCE_FILES, SOURCE_CHUNKS])
def code_graph(context: dg.AssetExecutionContext, nova: NovaSettings):
    """The code graph as three tables under ``NOVA_HOME/tables``: ``code_symbols``, ``code_relations`` and
    ``code_names`` (core/index/graph.py gives their columns). Only files whose blake3 changed are parsed
    again; names are resolved over the whole tree each time a file or chunk changed, and nothing is done
    when none did (the digest of its inputs is the one kept in the tables' footers, graph/stored.py; tables
    of two builds, from a run killed between their writes, are parsed again whole)."""
    settings = nova.settings()
    layout = settings.layout
    manifest = require_table(layout, SOURCE_FILES)
    meta = last_metadata(context)
    kept = graph.kept_attrs(layout)  # what made the tables, from their footers (None: not all written)
    if kept == {}:  # tables written before their footers said: the instance's memory of the last build
        kept = {k: str(meta[k]) for k in ("graph_version", "inputs_digest") if k in meta}
        kept["files"] = str(int(meta.get("files_parsed", 0)) + int(meta.get("files_reused", 0)))
    elif kept is not None and kept.get("graph_version") == graph.MIXED:
        context.log.warning(
            "the code graph's tables are of two builds (a run killed between their writes): every file is "
            "parsed again"
        )
    same_version = kept is not None and kept.get("graph_version") == graph.GRAPH_VERSION
    # the chunks' part of the digest, once per version of their table (an unchanged run reads none of it:
    # reading and hashing the spans took 0.54 s of an unchanged run at 10,000 files)
    spans_table = functools.cache(lambda: read_table(layout, SOURCE_CHUNKS, columns=graph.SPAN_COLUMNS))
    spans = memo(layout, SOURCE_CHUNKS, "graph.chunk_spans", lambda: graph.chunk_spans_digest(spans_table()))
    digest = graph.inputs_digest(settings.source_dir, manifest, spans)
    if same_version and kept.get("inputs_digest") == digest:
        # decided before the tables are read: reading them is most of an unchanged run's cost (0.59 s of
        # 0.71 s at 3,000 files, growing with the relations)
        context.log.info("no file or chunk changed since the last code graph: no work")
        return dg.MaterializeResult(
            metadata={
                **meta,
                "files_parsed": 0,
                "files_reused": int(kept.get("files") or 0),
                "graph_version": graph.GRAPH_VERSION,
                "inputs_digest": digest,
                "unchanged": True,
            }
        )
    chunks = spans_table()  # read once: by the digest when the memo was stale
    # as Arrow tables: build_graph drops the changed files' rows before pandas sees them
    tables = [read_arrow(layout, t) for t in graph.TABLES] if same_version else []
    previous = tuple(tables) if tables and all(t is not None for t in tables) else None
    symbols, relations, names, stats = graph.build_graph(
        settings.source_dir, manifest, chunks, previous, progress=progress_reporter(context, "graph", "files")
    )
    graph.write_tables(layout, (symbols, relations, names), digest, stats.files_parsed + stats.files_reused)
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

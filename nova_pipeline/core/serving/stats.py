"""What is built and how big it is, as plain data, for ``nova status``, ``nova stats`` and the admin API.

:func:`describe_state` is one row per asset (what it holds, where). :func:`collect_stats` gathers the
numbers: the vector store, the embedding cache, the compressed store, patterns and dictionary, the
system. Nothing here raises for a missing part: absent parts are absent from the result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nova_pipeline.core.errors import IndexNotBuiltError, NovaError
from nova_pipeline.core.index.vector_store import fresh_client
from nova_pipeline.core.ingest.manifest import DELETED
from nova_pipeline.core.keys import (
    BACKUPS,
    COMPRESSED_STORE,
    COMPRESSION_DICTIONARY,
    FREQUENT_PATTERNS,
    GOLDEN_COPY,
    LEXICAL_INDEX,
    SOURCE_CHUNKS,
    SOURCE_FILES,
    VECTOR_INDEX,
)
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import read_table, table_path

__all__ = ["collect_stats", "describe_state"]


READ_LOCK_TIMEOUT_S = 5.0  # how long stats wait for a writer to let them open an embedded store


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def describe_state(settings: Settings, fingerprint: str, max_memory_mb: int) -> list[dict]:
    """``[{"asset", "what", "where", "warning"?}]``, one per built part, in pipeline order (empty before the
    first build)."""
    from nova_pipeline.core.compression.dictionary import DictionaryRegistry
    from nova_pipeline.core.compression.store import ContentStore
    from nova_pipeline.core.index.vector_store import get_collection
    from nova_pipeline.core.protect import backup, golden
    from nova_pipeline.core.serving.estimate import estimate_for_version
    from nova_pipeline.core.serving.pointer import read_state

    s, rows = settings, []
    manifest = read_table(s.layout, SOURCE_FILES)
    if manifest is None:
        return rows
    live = manifest[manifest["status"] != DELETED]
    counts = manifest["status"].value_counts().to_dict()
    rows.append(
        {
            "asset": SOURCE_FILES,
            "where": str(table_path(s.layout, SOURCE_FILES)),
            "what": f"{len(live):,} files, {int(live['size'].sum()):,} bytes; "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        }
    )
    patterns = read_table(s.layout, FREQUENT_PATTERNS)
    if patterns is not None:
        rows.append(
            {
                "asset": FREQUENT_PATTERNS,
                "what": f"{len(patterns)} patterns",
                "where": str(table_path(s.layout, FREQUENT_PATTERNS)),
            }
        )
    registry = DictionaryRegistry(s.home)
    info = registry.current()
    if info is not None:
        rows.append(
            {
                "asset": COMPRESSION_DICTIONARY,
                "where": str(registry.dir),
                "what": (
                    f"{info.size:,} B, held-out ratio {info.ratio_with:.2f}x "
                    f"vs {info.ratio_without:.2f}x without"
                    if info.blake3
                    else f"none ({info.reason})"
                ),
            }
        )
    store = ContentStore(s.home)
    if store.index_path.exists():
        idx = store.index()
        raw, stored = int(idx["size"].sum()), int(idx["stored_size"].sum())
        rows.append(
            {
                "asset": COMPRESSED_STORE,
                "where": str(store.root),
                "what": f"{len(idx):,} objects, {raw:,} -> {stored:,} bytes "
                f"({raw / stored if stored else 0:.2f}x)",
            }
        )
    # two columns, not the texts: the whole table is most of the store's bytes (about 2 s to read at 10,000
    # files); the lexical digest below is the one a rebuild already kept for this version of the table
    chunks = read_table(s.layout, SOURCE_CHUNKS, columns=["chunk_id", "truncated"])
    if chunks is not None:
        rows.append(
            {
                "asset": SOURCE_CHUNKS,
                "where": str(table_path(s.layout, SOURCE_CHUNKS)),
                "what": f"{len(chunks):,} chunks, {int(chunks['truncated'].sum())} truncated",
            }
        )
        where = s.chroma_url or str(s.layout.vectors)
        try:
            with fresh_client(s.home, s.chroma_url, create=False, lock_timeout=READ_LOCK_TIMEOUT_S) as client:
                col = get_collection(client, fingerprint, create=False)
                rows.append(
                    {
                        "asset": VECTOR_INDEX,
                        "where": where,
                        "what": f"{col.count():,} vectors in collection {col.name}",
                    }
                )
        except NovaError as exc:
            rows.append({"asset": VECTOR_INDEX, "where": where, "what": str(exc), "warning": True})
        from nova_pipeline.core.index import lexical

        lex = lexical.current_path(s.home)
        if lex is None:
            rows.append(
                {
                    "asset": LEXICAL_INDEX,
                    "where": str(s.layout.lexical),
                    "what": "none yet: run the rebuild job",
                    "warning": True,
                }
            )
        else:
            from nova_pipeline.core.index import lexical_delta

            meta = json.loads((lex / lexical.META).read_text())
            held = lexical_delta.holding(s.home, lexical.kept_digest(s.home), lambda: chunks["chunk_id"])
            stale = "" if held is not None else "; not of the current chunks"
            delta = lexical_delta.parse(held[1]) if held is not None and held[1] is not None else None
            docs = meta["docs"] + (len(delta.added) - len(delta.removed) if delta is not None else 0)
            of_delta = (
                f" (a delta of {len(delta.added):,} documents on the base)" if delta is not None else ""
            )
            rows.append(
                {
                    "asset": LEXICAL_INDEX,
                    "where": str(lex),
                    "what": f"{docs:,} documents, {meta.get('vocabulary', 0):,} terms{of_delta}{stale}",
                    **({"warning": True} if stale else {}),
                }
            )
        from nova_pipeline.core.keys import CODE_GRAPH
        from nova_pipeline.core.tables import CODE_RELATIONS, CODE_SYMBOLS

        symbols = read_table(s.layout, CODE_SYMBOLS, columns=["kind"])
        relations = read_table(s.layout, CODE_RELATIONS, columns=["kind", "target"])
        if symbols is not None and relations is not None:
            calls = relations[relations["kind"] == "CALLS"]
            rows.append(
                {
                    "asset": CODE_GRAPH,
                    "where": str(table_path(s.layout, CODE_SYMBOLS).parent),
                    "what": f"{len(symbols):,} symbols, {len(relations):,} relations, "
                    f"{int((calls['target'] != '').sum()):,} of {len(calls):,} calls resolved",
                }
            )
    cur = golden.current_version(s.home)
    if cur is not None:
        rows.append(
            {
                "asset": GOLDEN_COPY,
                "where": str(cur.path),
                "what": f"CURRENT {cur.name}: {cur.count:,} vectors, {cur.files} files, "
                f"{len(golden.list_versions(s.home))} versions kept",
            }
        )
    state = read_state(s.home)
    what = (
        f"FAILED OVER to the backup store ({state.backup_kind}) since {state.since}: {state.reason}; "
        f"searches are stale as of {state.backup_created_at}"
        if state.failed_over
        else f"primary active, breaker {state.breaker}"
    )
    if cur is not None:
        est = estimate_for_version(cur, max_memory_mb=max_memory_mb)
        what += (
            f"; a backup would need {est.required_bytes / 2**20:,.1f} MB "
            f"({est.bytes_per_chunk:,.0f} B/chunk, "
            f"zone {est.zone}): {est.choice}"
        )
    rows.append(
        {"asset": "failover", "where": str(s.layout.failover), "what": what, "warning": state.failed_over}
    )
    found = backup.list_backups(s.home)
    if found:
        rows.append(
            {
                "asset": BACKUPS,
                "where": str(backup.backups_dir(s.home)),
                "what": f"{len(found)} backups, newest {found[0].id} ({found[0].size:,} bytes)",
            }
        )
    return rows


def _vector_store_stats(settings: Settings, fingerprint: str) -> dict:
    """Collections (name: vectors), the vectors and documents of ours, bytes on disk (embedded mode).
    Reads only: an embedded data dir that does not exist yet is reported empty, not created."""
    from nova_pipeline.core.index.vector_store import collection_name, other_schema

    out: dict = {"where": settings.chroma_url or str(settings.layout.vectors)}
    try:
        with fresh_client(
            settings.home, settings.chroma_url, create=False, lock_timeout=READ_LOCK_TIMEOUT_S
        ) as client:
            cols = {
                c.name: c.count()
                for c in (
                    client.get_collection(x.name if hasattr(x, "name") else x, embedding_function=None)
                    for x in client.list_collections()
                )
            }
    except IndexNotBuiltError:  # nothing built yet, and opening did not create a data dir
        return {**out, "collections": {}, "vectors": 0, "documents": 0, "bytes_on_disk": 0}
    except Exception as exc:  # noqa: BLE001 - an unreachable store is a fact to report
        return {**out, "error": str(exc)}
    ours = cols.get(collection_name(fingerprint), cols.get(collection_name(fingerprint, other_schema()), 0))
    out.update(
        collections=cols,
        vectors=ours,
        documents=ours,
        bytes_on_disk=None if settings.chroma_url else _dir_bytes(settings.layout.vectors),
    )
    return out


def _embedding_cache_stats(settings: Settings, fingerprint: str) -> dict:
    """Entries and bytes of the embedding cache of ``fingerprint`` (read-only, writes nothing)."""
    path = settings.layout.embedding_cache(fingerprint)
    if not path.exists():
        return {"entries": 0, "bytes": 0, "path": str(path)}
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache

    db = EmbeddingCache.read_only(path)
    try:
        entries = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    finally:
        db.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"entries": int(entries), "bytes": size, "path": str(path)}


def collect_stats(settings: Settings, fingerprint: str, last_index_run: dict | None = None) -> dict:
    """Every number ``nova stats`` shows.

    Args:
        last_index_run: the last ``vector_index`` materialization's metadata (from the Dagster instance),
            for the cache hit rate of that run.
    """
    import psutil

    from nova_pipeline.core.compression.dictionary import DictionaryRegistry
    from nova_pipeline.core.compression.patterns import display_pattern
    from nova_pipeline.core.compression.store import ContentStore

    out: dict = {"vector_store": _vector_store_stats(settings, fingerprint)}
    cache = _embedding_cache_stats(settings, fingerprint)
    if last_index_run:
        hits, embedded = int(last_index_run.get("cache_hits", 0)), int(last_index_run.get("embedded", 0))
        asked = hits + embedded
        cache["last_run"] = {
            "cache_hits": hits,
            "embedded": embedded,
            "hit_rate": round(hits / asked, 4) if asked else None,
            "upserted": last_index_run.get("upserted"),
        }
    out["embedding_cache"] = cache
    store = ContentStore(settings.home)
    if store.index_path.exists():
        idx = store.index()
        raw, stored = int(idx["size"].sum()), int(idx["stored_size"].sum())
        out[COMPRESSED_STORE] = {
            "objects": len(idx),
            "raw_bytes": raw,
            "stored_bytes": stored,
            "ratio": round(raw / stored, 4) if stored else None,
            "bytes_on_disk": _dir_bytes(store.objects),
        }
    patterns = read_table(settings.layout, FREQUENT_PATTERNS)
    if patterns is not None:
        out["patterns"] = {
            "count": len(patterns),
            "top": [
                {"pattern": display_pattern(p), "frequency": int(f), "files": int(n)}
                for p, f, n in zip(
                    patterns["pattern"].head(3), patterns["frequency"].head(3), patterns["file_count"].head(3)
                )
            ],
        }
    info = DictionaryRegistry(settings.home).current()
    if info is not None:
        out["dictionary"] = {
            "blake3": info.blake3 or None,
            "bytes": info.size,
            "dict_id": info.dict_id,
            "level": info.level,
            "heldout_ratio_with": round(info.ratio_with, 4),
            "heldout_ratio_without": round(info.ratio_without, 4),
            "reason": info.reason or None,
        }
    from nova_pipeline.core.index import lexical

    lex = lexical.current_path(settings.home)
    if lex is not None:
        meta = json.loads((lex / lexical.META).read_text())
        out[LEXICAL_INDEX] = {
            "documents": meta["docs"],
            "vocabulary": meta.get("vocabulary", 0),
            "tokenizer": meta.get("tokenizer"),
            "bytes": _dir_bytes(lex),
            "path": str(lex),
        }
    home = settings.layout.home
    while not home.exists():
        home = home.parent
    disk = psutil.disk_usage(str(home))
    mem = psutil.virtual_memory()
    out["system"] = {
        "cpus": psutil.cpu_count(),
        "cpu_percent": psutil.cpu_percent(interval=0.2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_total": mem.total,
        "memory_available": mem.available,
        "disk_total": disk.total,
        "disk_free": disk.free,
        "nova_home_bytes": _dir_bytes(settings.layout.home) if settings.layout.home.exists() else 0,
    }
    return out

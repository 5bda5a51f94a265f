"""Assets of the compression stages: frequent_patterns, compression_dictionary, compressed_store.

Each reads the manifest from its table (``deps``, not an input: the IO manager wrote it there, and a step
that loads no input logs no input events). The checks of an asset run inside its step (``check_specs``,
Dagster's "checks executed within the asset"): each is evaluated on every materialization without a step,
an input load and five run events of its own, which is most of what an unchanged rebuild costs (issue 8).
A blocking check that fails fails the step after the materialization is recorded, so nothing downstream
runs.

Run-config defaults come from core (``PatternOptions``, ``DictionaryOptions``, ``store.DEFAULT_THREADS``): one
source each. There is one zstd level: ``compression_dictionary``'s, at which the dictionary is measured and
at which ``compressed_store`` then compresses.
"""

import dagster as dg
import pandas as pd

from nova_pipeline.core.compression.dictionary import DictionaryOptions, DictionaryRegistry, build_for_tree
from nova_pipeline.core.compression.patterns import (
    display_pattern,
    find_patterns,
    inputs_digest,
    pattern_sources,
)
from nova_pipeline.core.compression.repeats import PatternOptions
from nova_pipeline.core.compression.store import DEFAULT_THREADS, ContentStore, update_store
from nova_pipeline.core.ingest.manifest import unique_contents
from nova_pipeline.core.keys import (
    COMPRESSED_STORE,
    COMPRESSION,
    COMPRESSION_DICTIONARY,
    FREQUENT_PATTERNS,
    SOURCE_FILES,
)
from nova_pipeline.core.tables import read_table, require_table, table_attrs
from nova_pipeline.defs.metadata import last_metadata, md_table
from nova_pipeline.defs.resources import NovaSettings
from nova_pipeline.deploy.run_events import progress_reporter

_PATTERNS = PatternOptions()
_DICTIONARY = DictionaryOptions()


class PatternsConfig(dg.Config):
    """Pattern analysis settings (see :class:`~nova_pipeline.core.compression.repeats.PatternOptions`);
    lengths in bytes, memory in MB (2^20 bytes)."""

    min_length: int = _PATTERNS.min_length
    max_length: int = _PATTERNS.max_length
    min_frequency: int = _PATTERNS.min_frequency
    top_k: int = _PATTERNS.top_k
    max_workers: int = _PATTERNS.max_workers
    memory_limit_mb: int = _PATTERNS.memory_limit_mb


@dg.asset(kinds={"python", "parquet"}, group_name=COMPRESSION, deps=[SOURCE_FILES])
def frequent_patterns(context: dg.AssetExecutionContext, config: PatternsConfig, nova: NovaSettings):
    """Top repeated byte substrings (maximal repeats) across the tree.

    ``pattern`` (bytes), ``frequency`` (non-overlapping occurrences), ``file_count`` (unique contents holding
    it), ``first_seen`` and ``last_updated`` (UTC). Shards are analysed in ``max_workers`` processes and
    cached by blake3, so unchanged files are not analysed again; when no file and no option changed (the
    digest kept in the table's footer, ``patterns.inputs_digest``), the table is kept as it is.
    """
    settings = nova.settings()
    source_files = require_table(settings.layout, SOURCE_FILES)
    options = PatternOptions(**config.model_dump())
    digest = inputs_digest(source_files, options)
    previous = read_table(settings.layout, FREQUENT_PATTERNS)
    kept = table_attrs(settings.layout, FREQUENT_PATTERNS) or {}  # what made the table, from its footer
    if previous is not None and kept.get("inputs_digest") == digest:
        context.log.info("no file and no option changed since the last pattern analysis: no work")
        previous.attrs = {"inputs_digest": digest}
        last = last_metadata(context)
        return dg.MaterializeResult(
            value=previous,
            metadata={
                **last,
                "unchanged": True,
                "inputs_digest": digest,
                "patterns": len(previous),
                "shards_analysed": 0,
                "shards_cached": int(last.get("shards", 0)),
            },
        )
    df, stats = find_patterns(
        settings.source_dir,
        source_files,
        options,
        settings.layout.patterns_cache,
        previous,
        progress=progress_reporter(context, "patterns", "shards"),
    )
    top = df.head(20)
    sources = pattern_sources(settings.source_dir, source_files, top["pattern"].tolist())
    table = pd.DataFrame(
        {
            "pattern": [display_pattern(p) for p in top["pattern"]],
            "bytes": [len(p) for p in top["pattern"]],
            "frequency": top["frequency"],
            "files": top["file_count"],
            "e.g. in": [", ".join(f"`{s}`" for s in src) for src in sources],
        }
    )
    context.log.info(
        f"{len(df)} patterns from {stats.contents} contents; shards analysed {stats.shards_analysed}, "
        f"cached {stats.shards_cached}"
    )
    df.attrs = {"inputs_digest": digest}  # kept in the table's footer (tables.write_table)
    return dg.MaterializeResult(
        value=df,
        metadata={
            "unchanged": False,
            "inputs_digest": digest,
            "patterns": len(df),
            "contents": stats.contents,
            "bytes": stats.bytes,
            "shards": stats.shards,
            "shards_analysed": stats.shards_analysed,
            "shards_cached": stats.shards_cached,
            "workers": stats.workers,
            "peak_rss_mb": round(stats.peak_rss_mb, 1),
            "duration_s": round(stats.duration_seconds, 3),
            "skipped": dg.MetadataValue.json(stats.skipped),
            "top_patterns": md_table(table),
        },
    )


class DictionaryConfig(dg.Config):
    """Dictionary settings (see :class:`~nova_pipeline.core.compression.dictionary.DictionaryOptions`): size
    in bytes; ``level``, the zstd level of the held-out measurement and of the store; held-out share in
    percent; drift as a share (0.05 = 5%)."""

    dict_size: int = _DICTIONARY.dict_size
    level: int = _DICTIONARY.level
    heldout_percent: int = _DICTIONARY.heldout_percent
    drift_threshold: float = _DICTIONARY.drift_threshold


DICTIONARY_CHECK = dg.AssetCheckSpec(
    "dictionary_beats_no_dictionary",
    asset=COMPRESSION_DICTIONARY,
    description="The dictionary beats no dictionary on held-out files.",
)


@dg.asset(
    kinds={"zstd"},
    group_name=COMPRESSION,
    deps=[SOURCE_FILES, frequent_patterns],
    check_specs=[DICTIONARY_CHECK],
)
def compression_dictionary(context: dg.AssetExecutionContext, config: DictionaryConfig, nova: NovaSettings):
    """A zstd dictionary trained on the tree, named by its blake3 under ``NOVA_HOME/dictionaries``.

    Retrained only when the held-out ratio falls by more than ``drift_threshold``; otherwise the current
    dictionary is kept, because the store refers to it. Runs after ``frequent_patterns`` but does not seed
    from them (see :mod:`nova_pipeline.core.compression.dictionary`).
    """
    settings = nova.settings()
    source_files = require_table(settings.layout, SOURCE_FILES)
    registry = DictionaryRegistry(settings.home)
    options = DictionaryOptions(**config.model_dump())
    info, action, skipped = build_for_tree(
        unique_contents(settings.source_dir, source_files), registry, options
    )
    messages = {
        "unchanged": "held-out set and dictionary unchanged: nothing trained, nothing measured",
        "kept": "no drift: kept the current dictionary",
        "trained": f"trained a new dictionary in {info.training_seconds:.2f} s",
        "no_dictionary": f"no dictionary: {info.reason}",
    }
    context.log.info(messages[action])
    return dg.MaterializeResult(
        metadata={
            "action": action,
            "dictionary_blake3": info.blake3 or "(none)",
            "path": dg.MetadataValue.path(str(registry.path(info.blake3))) if info.blake3 else "(none)",
            "size_bytes": info.size,
            "dict_id": info.dict_id,
            "training_seconds": round(info.training_seconds, 3),
            "samples": info.samples,
            "sample_bytes": info.sample_bytes,
            "heldout_files": info.heldout_files,
            "heldout_ratio_with_dictionary": round(info.ratio_with, 4),
            "heldout_ratio_without_dictionary": round(info.ratio_without, 4),
            "heldout_gain": round(info.gain, 4),
            "skipped_changed_since_scan": skipped,
        },
        check_results=[dictionary_beats_no_dictionary(registry)],
    )


def dictionary_beats_no_dictionary(registry: DictionaryRegistry) -> dg.AssetCheckResult:
    """WARN when the current dictionary's held-out ratio is below that of plain zstd at the same level (a
    tree with no dictionary, ``blake3 == ""``, passes); fails when no dictionary was ever built."""
    info = registry.current()
    if info is None:
        return dg.AssetCheckResult(
            check_name=DICTIONARY_CHECK.name, passed=False, description="no dictionary has been built"
        )
    passed = info.blake3 == "" or info.ratio_with >= info.ratio_without
    return dg.AssetCheckResult(
        check_name=DICTIONARY_CHECK.name,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"ratio_with": round(info.ratio_with, 4), "ratio_without": round(info.ratio_without, 4)},
        description=None
        if passed
        else (
            f"held-out ratio {info.ratio_with:.3f} with the dictionary is below {info.ratio_without:.3f} "
            "without it: retrain with a larger sample or a smaller dict_size"
        ),
    )


class StoreConfig(dg.Config):
    """Store settings: compression threads (-1: every core; the zstd level is the dictionary's); the
    round-trip check verifies every object up to ``round_trip_sample`` objects, a random sample of that
    many above it (0: all)."""

    threads: int = DEFAULT_THREADS
    round_trip_sample: int = 5000


ROUND_TRIP_CHECK = dg.AssetCheckSpec(
    "store_round_trip",
    asset=COMPRESSED_STORE,
    blocking=True,
    description="Stored objects decompress and match their blake3 keys.",
)


@dg.asset(
    kinds={"zstd"},
    group_name=COMPRESSION,
    deps=[SOURCE_FILES, compression_dictionary],
    check_specs=[ROUND_TRIP_CHECK],
)
def compressed_store(context: dg.AssetExecutionContext, config: StoreConfig, nova: NovaSettings):
    """Every unique content as one zstd frame under ``NOVA_HOME/store``, keyed by blake3, verified by round
    trip, at the zstd level the dictionary was measured at.

    Incremental: only contents the store lacks are compressed. Garbage collection then removes objects that
    neither the new index nor a pin (a golden version) refers to. When no content, dictionary or pin changed
    (the digest in the index's footer, ``store.inputs_digest``), the index is kept as it is. Fails, with
    committed objects intact, when a write fails (``ENOSPC`` names the fix); its blocking check
    ``store_round_trip`` fails naming the object."""
    settings = nova.settings()
    source_files = require_table(settings.layout, SOURCE_FILES)
    store = ContentStore(settings.layout)
    info = store.registry.current()
    dict_digest = info.blake3 if info else ""
    level = info.level if info else _DICTIONARY.level
    update = update_store(
        store,
        settings.source_dir,
        source_files,
        dict_digest,
        level,
        config.threads,
        progress=progress_reporter(context, "compress", "objects"),
    )
    put = update.put
    if update.unchanged:
        context.log.info(
            f"no content, dictionary or pin changed since the last update: the index of {update.objects} "
            "objects is kept, with no stat of each and no garbage collection"
        )
    elif put.written == 0:
        context.log.info(f"nothing to compress: all {put.already_stored} contents already stored")
    else:
        context.log.info(f"stored {put.written} new objects, {put.bytes_in:,} -> {put.bytes_out:,} bytes")
    return dg.MaterializeResult(
        metadata={
            "unchanged": update.unchanged,
            "objects": update.objects,
            "objects_written": put.written,
            "objects_already_stored": put.already_stored,
            "bytes_in": put.bytes_in,
            "bytes_out": put.bytes_out,
            "ratio_new": round(put.bytes_in / put.bytes_out, 4) if put.bytes_out else 0.0,
            "ratio_store": round(update.ratio, 4),
            "raw_bytes": update.raw_bytes,
            "stored_bytes": update.stored_bytes,
            "dedup_saved_bytes": update.dedup_saved_bytes,
            "mb_per_s": round(put.mb_per_s, 1),
            "objects_removed": update.removed_objects,
            "bytes_freed": update.freed_bytes,
            "skipped": dg.MetadataValue.json(put.skipped),
            "dictionary_blake3": dict_digest or "(none)",
            "zstd_level": level,
            "index": dg.MetadataValue.path(str(store.index_path)),
        },
        check_results=[store_round_trip(store, config.round_trip_sample)],
    )


def store_round_trip(store: ContentStore, sample_size: int) -> dg.AssetCheckResult:
    """Decompress up to ``sample_size`` objects (0: all) and compare each with its blake3 key; fails naming
    the first three objects (key and path) that don't match."""
    keys = store.sample_keys(sample_size)
    failures = store.verify(keys)
    return dg.AssetCheckResult(
        check_name=ROUND_TRIP_CHECK.name,
        passed=not failures,
        metadata={
            "checked": len(keys),
            "objects": len(store.index()),
            "failures": len(failures),
            "first_failures": dg.MetadataValue.json(failures[:10]),
        },
        description="; ".join(failures[:3]) if failures else None,
    )

"""The ``source_files`` asset: the manifest of the source tree; the ``source_tree_changed`` sensor."""

import json
import os

import dagster as dg

from nova_pipeline.core.ingest.manifest import ScanResult, scan
from nova_pipeline.core.ingest.walk import DEFAULT_MAX_FILE_SIZE, ScanOptions
from nova_pipeline.core.keys import INGEST, SOURCE_FILES
from nova_pipeline.core.tables import SOURCE_FILES_BINARIES, read_table, write_table
from nova_pipeline.defs.metadata import md_table
from nova_pipeline.defs.resources import DeletionGuardResource, NovaSettings
from nova_pipeline.deploy.run_events import progress_reporter


class ScanConfig(dg.Config):
    """Scan options. ``max_file_size_bytes``: larger files are skipped and counted (default 2 MiB)."""

    max_file_size_bytes: int = DEFAULT_MAX_FILE_SIZE


def _scan_metadata(result: ScanResult) -> dict[str, object]:
    """Materialization metadata of a scan: counts, bytes, skips, hashing throughput, languages."""
    st = result.stats
    return {
        "files": st.files,
        "bytes": st.bytes,
        **{f"status_{k}": v for k, v in st.status_counts.items()},
        "skipped": dg.MetadataValue.json(dict(st.skipped)),
        "skipped_total": sum(st.skipped.values()),
        "ignored_entries": st.ignored,
        "ignored_dirs_count": len(st.ignored_dirs),
        "ignored_files_count": sum(st.ignored_files.values()),
        # every ignored directory with the rule that ignored it, and ignored files counted per rule
        "ignored_dirs": dg.MetadataValue.json(dict(sorted(st.ignored_dirs.items()))),
        "ignored_files_by_rule": dg.MetadataValue.json(dict(st.ignored_files.most_common())),
        "files_rehashed": st.files_hashed,
        "bytes_rehashed": st.bytes_hashed,
        "hash_mb_per_s": round(st.hash_mb_per_s, 1),
        "duration_s": round(st.duration_seconds, 3),
        "languages": md_table(result.language_table()),
    }


@dg.asset(kinds={"python", "parquet"}, group_name=INGEST)
def source_files(
    context: dg.AssetExecutionContext, config: ScanConfig, nova: NovaSettings, guard: DeletionGuardResource
):
    """Manifest of the source tree: ``path, size, mtime_ns, blake3, language, status``.

    Follows nested ``.gitignore`` files, the built-in ignore list and ``NOVA_IGNORE``; skips binary and
    oversized files; re-hashes only files whose size or mtime changed since the last materialization.
    Fails before writing anything when the scan would lose most indexed files (see ``guard``).
    """
    deletion_guard = guard.guard()
    previous = read_table(nova.settings(require_source=False).layout, SOURCE_FILES)  # this asset's last value
    deletion_guard.check_source_dir(nova.source_dir, previous)
    settings = nova.settings()
    known_binaries = read_table(settings.layout, SOURCE_FILES_BINARIES)
    result = scan(
        ScanOptions(
            root=settings.source_dir,
            max_file_size=config.max_file_size_bytes,
            extra_ignore=settings.ignore,
            exclude_dirs=settings.state_dirs_to_exclude(),
        ),
        previous,
        known_binaries=known_binaries,
        progress=progress_reporter(context, "scan", "files"),
    )
    lost = deletion_guard.check_files(previous, result.manifest)
    write_table(settings.layout, SOURCE_FILES_BINARIES, result.binaries)
    st = result.stats
    statuses = ", ".join(f"{k} {v:,}" for k, v in st.status_counts.items())
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(st.skipped.items())) or "none"
    context.log.info(
        f"{settings.source_dir}: {st.files:,} files, {st.bytes:,} bytes; {statuses}; "
        f"re-hashed {st.bytes_hashed:,} bytes; skipped {skipped}; ignored {len(st.ignored_dirs):,} dirs, "
        f"{sum(st.ignored_files.values()):,} files: see the metadata for which and why"
    )
    return dg.MaterializeResult(
        value=result.manifest, metadata={**_scan_metadata(result), "files_lost": lost}
    )


# Read when the definitions load, on purpose: Dagster needs a sensor's interval then (as serving.py's).
LIVE_POLL_INTERVAL_S = max(1, int(float(os.environ.get("NOVA_LIVE_POLL_INTERVAL") or 5)))
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(
    name="source_tree_changed",
    job_name="live_update",
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=LIVE_POLL_INTERVAL_S,
    description="Polls a stat digest of the source tree (paths, sizes, mtimes: the scan's warm path, no "
    "hashing) every NOVA_LIVE_POLL_INTERVAL seconds and requests a live_update run when it changed, never "
    "while a live_update or rebuild run is queued or running. For a server with a daemon; on a "
    "workstation, nova watch is faster. Stopped by default.",
)
def source_tree_changed(context: dg.SensorEvaluationContext, nova: NovaSettings):
    from nova_pipeline.core.ingest.walk import stat_digest

    settings = nova.settings()
    digest, files = stat_digest(
        ScanOptions(
            root=settings.source_dir,
            extra_ignore=settings.ignore,
            exclude_dirs=settings.state_dirs_to_exclude(),
        )
    )
    last = json.loads(context.cursor) if context.cursor else {}
    if digest == last.get("digest"):
        return dg.SkipReason(f"{files:,} files, unchanged since the last run request")
    busy = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name="live_update", statuses=IN_FLIGHT), limit=1
    ) or context.instance.get_run_records(
        filters=dg.RunsFilter(job_name="rebuild", statuses=IN_FLIGHT), limit=1
    )
    if busy:  # the cursor keeps the old digest: the change is requested once that run is done
        return dg.SkipReason(f"the tree changed, but run {busy[0].dagster_run.run_id[:8]} is in flight")
    context.update_cursor(json.dumps({"digest": digest, "files": files}))
    return dg.RunRequest(
        run_key=f"tree-{digest}",
        tags={"nova/requested_by": "source_tree_changed", "nova/tree_digest": digest},
    )

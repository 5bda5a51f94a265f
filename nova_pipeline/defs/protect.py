"""Protecting the index: the golden copy and backups (assets and checks), and the ops of the reset,
restore and restore-drill jobs (the jobs themselves are in ``jobs.py``).

``golden_copy_verifies`` runs inside golden_copy's step (``check_specs``, as the checks of the other assets of
``rebuild``); the checks of ``backups`` are their own steps, since the backup job is not on the warm path and
the restore drill is worth running on its own from the UI."""

import dagster as dg

from nova_pipeline.core.keys import (
    BACKUPS,
    CODE_GRAPH,
    COMPRESSED_STORE,
    GOLDEN_COPY,
    LEXICAL_INDEX,
    PROTECT,
    SOURCE_CHUNKS,
    VECTOR_INDEX,
)
from nova_pipeline.core.protect import audit, backup, golden
from nova_pipeline.core.serving.estimate import estimate_for_version
from nova_pipeline.core.serving.failover import FailoverSettings, active_client
from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline.defs.metadata import DAILY
from nova_pipeline.defs.resources import (
    DeletionGuardResource,
    EmbedderResource,
    NovaSettings,
    SharedPrimaryView,
)
from nova_pipeline.deploy.instance import postgres_url
from nova_pipeline.deploy.run_events import progress_reporter


class GoldenConfig(dg.Config):
    """``keep``: golden versions kept (CURRENT is never removed)."""

    keep: int = golden.DEFAULT_KEEP


GOLDEN_CHECK = dg.AssetCheckSpec(
    "golden_copy_verifies",
    asset=GOLDEN_COPY,
    blocking=True,
    description="The CURRENT golden version verifies against its manifest.",
)


@dg.asset(
    kinds={"chromadb"},
    group_name=PROTECT,
    deps=[VECTOR_INDEX, COMPRESSED_STORE, LEXICAL_INDEX, SOURCE_CHUNKS, CODE_GRAPH],
    check_specs=[GOLDEN_CHECK],
)
def golden_copy(
    context: dg.AssetExecutionContext,
    config: GoldenConfig,
    nova: NovaSettings,
    embedder: EmbedderResource,
    guard: DeletionGuardResource,
    shared_view: SharedPrimaryView,  # the primary's view, shared with vector_index's steps in this process
):
    """A verified, read-only snapshot of the index, dictionaries and manifests under ``NOVA_HOME/golden``.

    Promotes a new version only when the index, the store or the dictionaries changed (the metadata says
    ``unchanged: CURRENT <version> still matches`` otherwise); files equal to CURRENT's are hard links.
    Runs only when the blocking checks of ``vector_index`` and ``compressed_store`` pass, and never
    replaces a non-empty CURRENT with an empty index without the guard's override. Then brings the
    runtime copy (``NOVA_HOME/runtime/vectors``) to CURRENT.
    """
    settings = nova.settings(require_source=False)
    p = golden.promote(  # reads the chunks table only when a version is made (its digests are kept)
        settings.home,
        embedder.fingerprint(),
        settings.chroma_url,
        keep=config.keep,
        guard=guard.guard(),
        # the store the pointer names (while failed over: the backup), read under promote's writer lock
        open_store=lambda: active_client(settings.home, settings.chroma_url),
        progress=progress_reporter(context, "golden copy", "shards"),
    )
    v = p.version
    context.log.info(
        p.reason
        if not p.promoted
        else f"golden version {v.name} ({p.reason}): {v.count} vectors; wrote {p.bytes_written:,} bytes "
        f"in {p.files_written} files, linked {p.bytes_linked:,} bytes in {p.files_linked} files"
    )
    # a first runtime copy starts as a file copy of the primary's embedded data dir (not while failed over:
    # then the primary is the store in doubt)
    embedded_primary = settings.chroma_url is None and not read_state(settings.home).failed_over
    seed = settings.layout.vectors if embedded_primary else None
    runtime = golden.make_runtime_copy(settings.home, seed=seed)
    estimate = estimate_for_version(v, max_memory_mb=FailoverSettings.from_env().max_memory_mb)
    return dg.MaterializeResult(
        metadata={
            "promoted": p.promoted,
            "reason": p.reason,
            "version": v.name,
            "path": dg.MetadataValue.path(str(v.path)),
            "vectors": v.count,
            "files": v.files,
            "bytes": v.bytes,
            "bytes_written": p.bytes_written,
            "bytes_linked": p.bytes_linked,
            "files_written": p.files_written,
            "files_linked": p.files_linked,
            "shards_written": p.shards_written,
            "shards_linked": p.shards_linked,
            "versions_kept": len(golden.list_versions(settings.home)),
            "removed_by_retention": dg.MetadataValue.json(p.removed),
            "runtime_copy": dg.MetadataValue.path(runtime.path),
            "runtime_copy_upserted": runtime.upserted,
            "runtime_copy_deleted": runtime.deleted,
            "runtime_copy_seeded": runtime.seeded,
            # what a failover to this version would need (seed 004's zones, the measured cost per chunk)
            "backup_zone": estimate.zone,
            "backup_bytes_per_chunk": round(estimate.bytes_per_chunk),
            "backup_required_mb": round(estimate.required_bytes / 2**20, 1),
            "backup_store": estimate.choice,
            "duration_s": round(p.seconds + runtime.seconds, 3),
        },
        # unchanged: promote has just verified CURRENT against its manifest; that is this check's work
        check_results=[golden_copy_verifies(settings.home, verified=None if p.promoted else v.name)],
    )


def golden_copy_verifies(home, verified: str | None = None) -> dg.AssetCheckResult:
    """The CURRENT golden version against its manifest (every file's size and blake3); fails naming the
    first three files that differ, or when there is no golden copy. ``verified``: the name of a version
    that :func:`~nova_pipeline.core.protect.golden.promotion.promote` verified against its manifest in this
    same step (an unchanged CURRENT); it is not read a second time."""
    cur = golden.current_version(home)
    if cur is None:
        return dg.AssetCheckResult(
            check_name=GOLDEN_CHECK.name, passed=False, description="there is no golden copy"
        )
    if cur.name == verified:
        return dg.AssetCheckResult(
            check_name=GOLDEN_CHECK.name,
            passed=True,
            metadata={"version": cur.name, "failures": 0, "verified": "by promote"},
        )
    failures = golden.verify_tree(cur.path)
    return dg.AssetCheckResult(
        check_name=GOLDEN_CHECK.name,
        passed=not failures,
        metadata={"version": cur.name, "failures": len(failures), "verified": "now"},
        description="; ".join(failures[:3]) if failures else None,
    )


class BackupConfig(dg.Config):
    """``keep``: verified backups kept; ``level``/``threads``: zstd settings of the archive."""

    keep: int = backup.DEFAULT_KEEP
    level: int = backup.DEFAULT_LEVEL
    threads: int = backup.DEFAULT_THREADS


@dg.asset(kinds={"zstd"}, group_name=PROTECT, deps=[golden_copy], freshness_policy=DAILY)
def backups(context: dg.AssetExecutionContext, config: BackupConfig, nova: NovaSettings):
    """``backup_<UTC>.tar.zst`` of the CURRENT golden version, its store objects and dictionaries, and a
    ``pg_dump -Fc`` of the Dagster database when the instance is on PostgreSQL; retention applied."""
    home = nova.settings(require_source=False).home
    result = backup.create_backup(
        home, postgres_url(context.instance), level=config.level, threads=config.threads, keep=config.keep
    )
    context.log.info(
        f"backup {result.info.id}: {result.members} members, {result.info.size:,} bytes; "
        f"pg_dump: {result.pg_dump}"
    )
    if result.pg_dump.startswith("failed"):
        context.log.error(f"the Dagster database is not in backup {result.info.id}: pg_dump {result.pg_dump}")
    return dg.MaterializeResult(
        metadata={
            "backup_id": result.info.id,
            "path": dg.MetadataValue.path(str(result.info.path)),
            "archive_bytes": result.info.size,
            "member_bytes": result.bytes,
            "members": result.members,
            "golden_version": result.golden_version,
            "seconds": round(result.seconds, 2),
            "pg_dump": result.pg_dump,
            "removed_by_retention": dg.MetadataValue.json(result.removed),
            "backups_kept": len(backup.list_backups(home)),
        }
    )


def _check_newest(nova: NovaSettings, verify) -> dg.AssetCheckResult:
    b = backup.newest_backup(nova.settings(require_source=False).home)
    if b is None:
        return dg.AssetCheckResult(passed=False, description="no backup")
    failures = verify(b)
    return dg.AssetCheckResult(
        passed=not failures,
        metadata={"backup_id": b.id, "failures": len(failures)},
        description="; ".join(failures[:3]) if failures else None,
    )


@dg.asset_check(
    asset=backups, blocking=True, description="Level 1: manifest and checksum of the newest backup."
)
def backup_structure(nova: NovaSettings) -> dg.AssetCheckResult:
    return _check_newest(nova, backup.verify_structure)


@dg.asset_check(asset=backups, description="Level 2: every member of the newest backup matches its blake3.")
def backup_full_read(nova: NovaSettings) -> dg.AssetCheckResult:
    return _check_newest(nova, backup.verify_full)


@dg.asset_check(asset=backups, description="Level 3: the newest backup restores into a temp dir and works.")
def backup_restore_drill(context: dg.AssetCheckExecutionContext, nova: NovaSettings) -> dg.AssetCheckResult:
    home = nova.settings(require_source=False).home
    return _check_newest(nova, lambda b: backup.restore_drill(home, b, postgres_url(context.instance)))


# ---- ops of the op jobs ----------------------------------------------------------------------------------


class ConfirmConfig(dg.Config):
    """Destructive operations need ``confirm: true``."""

    confirm: bool = False


def _who(context) -> str:
    return audit.actor(context.run.tags.get("dagster/user") or context.run.tags.get("user"))


@dg.op
def reset_index_op(context: dg.OpExecutionContext, config: ConfirmConfig, nova: NovaSettings):
    """Bring the primary vector index back to the CURRENT golden copy, without re-embedding. Audited."""
    settings = nova.settings(require_source=False)
    entry = golden.reset_index(settings.home, settings.chroma_url, config.confirm, _who(context))
    context.log_event(
        dg.AssetObservation(
            asset_key=VECTOR_INDEX,
            metadata={
                "reset_from_golden": entry["details"]["version"],
                "vectors": entry["details"]["count"],
                "audit": dg.MetadataValue.json(entry),
            },
        )
    )


class DrillConfig(dg.Config):
    """``backup_id``: empty for the newest backup."""

    backup_id: str = ""


@dg.op
def restore_drill_op(context: dg.OpExecutionContext, config: DrillConfig, nova: NovaSettings):
    """Level 3: restore a backup into a temp dir, open it, verify every object; fails on any problem."""
    home = nova.settings(require_source=False).home
    b = backup.find_backup(home, config.backup_id) if config.backup_id else backup.newest_backup(home)
    if b is None:
        raise backup.BackupError(f"no backup under {backup.backups_dir(home)} to drill")
    failures = backup.restore_drill(home, b, postgres_url(context.instance))
    context.log_event(
        dg.AssetObservation(
            asset_key=BACKUPS,
            metadata={
                "restore_drill": b.id,
                "passed": not failures,
                "failures": dg.MetadataValue.json(failures[:10]),
            },
        )
    )
    if failures:
        raise backup.BackupVerifyError(f"restore drill of {b.id} failed: {'; '.join(failures[:3])}")


class RestoreConfig(dg.Config):
    """``backup_id`` to restore, and ``confirm: true``."""

    backup_id: str
    confirm: bool = False


@dg.op
def restore_op(context: dg.OpExecutionContext, config: RestoreConfig, nova: NovaSettings):
    """Restore a backup to a new location, verify it, switch atomically, rebuild the index. Audited."""
    settings = nova.settings(require_source=False)
    entry = backup.restore(
        settings.home, config.backup_id, config.confirm, _who(context), settings.chroma_url
    )
    context.log_event(
        dg.AssetObservation(
            asset_key=GOLDEN_COPY,
            metadata={"restored_from": config.backup_id, "audit": dg.MetadataValue.json(entry)},
        )
    )

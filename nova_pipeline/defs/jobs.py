"""Jobs and schedules. Naming: a job object is ``<name>_job`` for the job ``<name>``; ops end in ``_op``.

Asset jobs select assets by key, so this module needs no asset objects from the other ``defs`` modules.
"""

import dagster as dg

from nova_pipeline.core.keys import (
    BACKUPS,
    COMPRESSED_STORE,
    LEXICAL_INDEX,
    SOURCE_CHUNKS,
    SOURCE_FILES,
    VECTOR_INDEX,
)
from nova_pipeline.defs.protect import reset_index_op, restore_drill_op, restore_op
from nova_pipeline.defs.serving import failback_op, failover_op

# Jobs without an executor_def run on the code location's nova_executor (nova_pipeline/executor.py): in one
# process by default (README, "The warm path, and why rebuild runs in one process": the heavy steps
# parallelise inside themselves, and a process per step only paid for imports again), or on Celery workers.
rebuild_job = dg.define_asset_job(
    "rebuild",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(BACKUPS),
    description="Incremental rebuild of every asset, ending with a verified golden copy.",
)

live_update_job = dg.define_asset_job(
    "live_update",
    selection=dg.AssetSelection.assets(
        SOURCE_FILES, COMPRESSED_STORE, SOURCE_CHUNKS, VECTOR_INDEX, LEXICAL_INDEX
    ),
    description="The incremental part of a rebuild: scan, store, chunk, embed, lexical index; no pattern "
    "analysis, dictionary training nor golden promotion (requested by the source_tree_changed sensor).",
)

backup_job = dg.define_asset_job(
    "backup",
    selection=dg.AssetSelection.assets(BACKUPS),
    description="Archive the CURRENT golden copy and its store objects; verify; apply retention.",
)


@dg.job(
    name="reset_index",
    description="Bring the primary index back to the golden copy "
    "(needs ops.reset_index_op.config.confirm: true).",
)
def reset_index_job():
    reset_index_op()


@dg.job(
    name="restore", description="Restore a backup (needs ops.restore_op.config.backup_id and confirm: true)."
)
def restore_job():
    restore_op()


@dg.job(
    name="restore_drill",
    description="Restore the newest (or a given) backup into a temp dir and prove it works.",
)
def restore_drill_job():
    restore_drill_op()


@dg.job(
    name="failover",
    executor_def=dg.in_process_executor,
    description="Switch searches and writes to the backup store made from the golden copy "
    "(requested by the primary_vector_store_health sensor when its breaker opens).",
)
def failover_job():
    failover_op()


@dg.job(
    name="failback",
    executor_def=dg.in_process_executor,
    description="Replay the failover journal into the primary, check it, switch back "
    "(requested by the primary_recovered sensor).",
)
def failback_job():
    failback_op()


nightly_rebuild = dg.ScheduleDefinition(
    name="nightly_rebuild",
    job=rebuild_job,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Incremental rebuild every night at 02:00 (instance timezone). Stopped by default.",
)

BACKUP_INTERVAL_S = (
    24 * 3600
)  # daily_backup's: nova health is critical when the newest backup is twice as old

daily_backup = dg.ScheduleDefinition(
    name="daily_backup",
    job=backup_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="A verified backup every day at 03:00. Stopped by default.",
)

weekly_restore_drill = dg.ScheduleDefinition(
    name="weekly_restore_drill",
    job=restore_drill_job,
    cron_schedule="0 4 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Restore drill of the newest backup every Sunday at 04:00. Stopped by default.",
)

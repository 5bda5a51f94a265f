"""Jobs and schedules of the asset graph. (Op jobs for reset, restore and drills live in defs/golden.py.)"""

import dagster as dg

from nova_pipeline.defs import golden

# rebuild runs in one process (see README, "Why one process"): its heavy steps parallelise inside
# themselves (pattern workers, zstd threads), and a process per step only paid for imports again.
rebuild_job = dg.define_asset_job(
    "rebuild",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets("backups"),
    description="Incremental rebuild of every asset, ending with a verified golden copy.",
    executor_def=dg.in_process_executor,
)

backup_job = dg.define_asset_job(
    "backup",
    selection=dg.AssetSelection.assets("backups"),
    description="Archive the CURRENT golden copy and its store objects; verify; apply retention.",
)

nightly_rebuild = dg.ScheduleDefinition(
    name="nightly_rebuild", job=rebuild_job, cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Incremental rebuild every night at 02:00 (instance timezone). Stopped by default.",
)

daily_backup = dg.ScheduleDefinition(
    name="daily_backup", job=backup_job, cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="A verified backup every day at 03:00. Stopped by default.",
)

weekly_restore_drill = dg.ScheduleDefinition(
    name="weekly_restore_drill", job=golden.restore_drill, cron_schedule="0 4 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Restore drill of the newest backup every Sunday at 04:00. Stopped by default.",
)

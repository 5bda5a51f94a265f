"""Jobs and schedules."""


import dagster as dg

rebuild_job = dg.define_asset_job(
    "rebuild",
    selection=dg.AssetSelection.all(),
    description="Incremental rebuild of every asset: scan, patterns, dictionary, store, chunks, vectors.",
)

nightly_rebuild = dg.ScheduleDefinition(
    name="nightly_rebuild",
    job=rebuild_job,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Incremental rebuild every night at 02:00 (instance timezone). Stopped by default.",
)

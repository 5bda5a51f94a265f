"""The one Definitions object of the nova_pipeline code location."""


import dagster as dg

from nova_pipeline.defs import jobs, scan
from nova_pipeline.resources import default_resources

defs = dg.Definitions(
    assets=[scan.source_files],
    jobs=[jobs.rebuild_job],
    schedules=[jobs.nightly_rebuild],
    resources=default_resources(),
)

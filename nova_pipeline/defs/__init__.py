"""Dagster glue: thin assets, checks, jobs, sensors and schedules that call ``nova_pipeline.core``."""

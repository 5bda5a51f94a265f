"""nova_pipeline: a Dagster pipeline that keeps a searchable, compressed, backed-up store of a source tree."""

__version__ = "0.1.0"

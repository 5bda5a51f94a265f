"""Plain-Python logic of nova_pipeline. Nothing in this package imports dagster."""

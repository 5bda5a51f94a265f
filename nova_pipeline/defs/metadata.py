"""Helpers that turn core results into Dagster materialization metadata."""


import dagster as dg
import pandas as pd


def md_table(df: pd.DataFrame) -> dg.MetadataValue:
    """A DataFrame as a Markdown table for the Dagster UI."""
    return dg.MetadataValue.md(df.to_markdown(index=False) if len(df) else "_(empty)_")

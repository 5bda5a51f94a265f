"""Helpers that turn core results into Dagster materialization metadata."""

import datetime as dt

import dagster as dg
import pandas as pd


def md_table(df: pd.DataFrame) -> dg.MetadataValue:
    """A DataFrame as a Markdown table for the Dagster UI."""
    return dg.MetadataValue.md(df.to_markdown(index=False) if len(df) else "_(empty)_")


# The nightly rebuild and the daily backup: the UI flags vector_index and backups when their last
# materialization is older than a day (warn) or 26 hours (fail), the schedule plus slack. (Dagster 1.13
# supersedes build_last_update_freshness_checks and its sensor with this policy, which needs no sensor.)
DAILY = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26), warn_window=dt.timedelta(hours=24))

"""Helpers that turn core results into Dagster materialization metadata."""

import datetime as dt

import dagster as dg
import pandas as pd


def last_metadata(context: dg.AssetExecutionContext) -> dict:
    """The metadata of this asset's newest materialization as plain values ({} when there is none): what an
    unchanged run compares with, and carries over."""
    ev = context.instance.get_latest_materialization_event(context.asset_key)
    mat = ev.asset_materialization if ev is not None else None
    return {k: v.value for k, v in mat.metadata.items()} if mat is not None else {}


def md_table(df: pd.DataFrame) -> dg.MetadataValue:
    """A DataFrame as a Markdown table for the Dagster UI."""
    return dg.MetadataValue.md(df.to_markdown(index=False) if len(df) else "_(empty)_")


# The nightly rebuild and the daily backup: the UI flags vector_index and backups when their last
# materialization is older than a day (warn) or 26 hours (fail), the schedule plus slack. (Dagster 1.13
# supersedes build_last_update_freshness_checks and its sensor with this policy, which needs no sensor.)
DAILY = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26), warn_window=dt.timedelta(hours=24))

"""What every ``nova`` verb shares: the Typer app, the console, the settings, the Dagster instance."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.settings import DEFAULT_HOME, Settings

app = typer.Typer(
    help="nova_pipeline: build, search, serve and manage the knowledge store of a source tree.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
console = Console()


@app.callback()
def _root() -> None:
    """Settings come from the environment: NOVA_HOME, NOVA_SOURCE_DIR, NOVA_CHROMA_URL, DAGSTER_HOME."""


def settings_from_env() -> Settings:
    return Settings.from_env(require_source=False)


def search_hint(home: Path) -> str:
    """The command that searches the store at ``home``: it names ``NOVA_HOME`` unless ``home`` is the one
    a bare ``nova search`` would open here (``./.nova``), so the hint never searches another tree's store."""
    default = Path(DEFAULT_HOME).expanduser().resolve()
    prefix = "" if Path(home).resolve() == default else f"NOVA_HOME={home} "
    return f'{prefix}nova search "your question" -k 5'


def require_dagster_home() -> None:
    """Runs are the checkpoint: without DAGSTER_HOME they would go to a temp dir and could not be resumed.

    Raises:
        NovaError: DAGSTER_HOME is unset.
    """
    if not os.environ.get("DAGSTER_HOME"):
        raise NovaError(
            "DAGSTER_HOME is not set: export DAGSTER_HOME=/path/to/dagster_home (runs are kept "
            "there, and a killed run is resumed from it)"
        )


def instance_postgres_url() -> str | None:
    """The Postgres URL of the Dagster instance of DAGSTER_HOME, or None (not set, or not on Postgres)."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    import dagster as dg

    from nova_pipeline.deploy.instance import postgres_url

    with dg.DagsterInstance.get() as instance:
        return postgres_url(instance)


def job_for_resume(job_name: str):
    """The job ``job_name`` of the code location (what ``nova resume`` re-executes: the run's own job).

    Raises:
        NovaError: the code location has no such job.
    """
    from nova_pipeline.definitions import defs

    try:
        return defs.resolve_job_def(job_name)
    except Exception as exc:  # noqa: BLE001 - Dagster raises its own error types for an unknown name
        raise NovaError(f"the code location has no job {job_name!r} to resume") from exc

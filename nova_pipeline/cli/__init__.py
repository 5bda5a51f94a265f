"""The ``nova`` command, one module per verb group; ``main`` is the console script's entry point."""

from __future__ import annotations

import sys

from rich.console import Console

from nova_pipeline.cli import explore, live, model, protect, run, serve  # noqa: F401 - each registers its verbs on app
from nova_pipeline.cli.common import app, job_for_resume
from nova_pipeline.core.errors import NovaError

__all__ = ["app", "job_for_resume", "main"]


def main() -> None:
    """Entry point of the ``nova`` console script; NovaError becomes a one-line message and exit code 2."""
    try:
        app()
    except NovaError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        sys.exit(2)

"""The ``nova`` command: status now; search, health and backup commands arrive with their stages."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.scanning import DELETED
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import read_table, table_path

app = typer.Typer(help="nova_pipeline: search and manage the knowledge store built by the rebuild job.",
                  no_args_is_help=True)
console = Console()


@app.callback()
def _root() -> None:
    """Settings come from the environment: NOVA_HOME, NOVA_SOURCE_DIR, NOVA_CHROMA_URL."""


def _settings() -> Settings:
    return Settings.from_env(require_source=False)


@app.command()
def status() -> None:
    """Summarise what the pipeline has built and where it lives."""
    s = _settings()
    table = Table(title=f"nova_pipeline state in {s.home}")
    table.add_column("asset")
    table.add_column("what")
    table.add_column("where")
    manifest = read_table(s.home, "source_files")
    if manifest is None:
        console.print(f"[yellow]Nothing built yet under {s.home}: run the rebuild job "
                      "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild).")
        raise typer.Exit(1)
    live = manifest[manifest["status"] != DELETED]
    counts = manifest["status"].value_counts().to_dict()
    table.add_row(
        "source_files",
        f"{len(live):,} files, {int(live['size'].sum()):,} bytes; "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        str(table_path(s.home, "source_files")),
    )
    console.print(table)
    if s.source_dir is not None:
        console.print(f"source: {s.source_dir}")


def main() -> None:
    """Entry point of the ``nova`` console script; NovaError becomes a one-line message and exit code 2."""
    try:
        app()
    except NovaError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()

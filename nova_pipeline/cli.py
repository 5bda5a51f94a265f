"""The ``nova`` command: status, search and resume; health and backup commands arrive with their stages."""

from __future__ import annotations

import json
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
    from nova_pipeline.core.dictionary import DictionaryRegistry
    from nova_pipeline.core.store import ContentStore

    s = _settings()
    manifest = read_table(s.home, "source_files")
    if manifest is None:
        console.print(f"[yellow]Nothing built yet under {s.home}: run the rebuild job "
                      "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild).")
        raise typer.Exit(1)
    table = Table(title=f"nova_pipeline state in {s.home}")
    for col in ("asset", "what", "where"):
        table.add_column(col)
    live = manifest[manifest["status"] != DELETED]
    counts = manifest["status"].value_counts().to_dict()
    table.add_row("source_files", f"{len(live):,} files, {int(live['size'].sum()):,} bytes; "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), str(table_path(s.home, "source_files")))
    patterns = read_table(s.home, "frequent_patterns")
    if patterns is not None:
        table.add_row("frequent_patterns", f"{len(patterns)} patterns", str(table_path(s.home, "frequent_patterns")))
    info = DictionaryRegistry(s.home).current()
    if info is not None:
        what = (f"{info.size:,} B, held-out ratio {info.ratio_with:.2f}x vs {info.ratio_without:.2f}x without"
                if info.blake3 else f"none ({info.reason})")
        table.add_row("compression_dictionary", what, str(DictionaryRegistry(s.home).dir))
    store = ContentStore(s.home)
    if store.index_path.exists():
        idx = store.index()
        raw, stored = int(idx["size"].sum()), int(idx["stored_size"].sum())
        table.add_row("compressed_store", f"{len(idx):,} objects, {raw:,} -> {stored:,} bytes "
                      f"({raw / stored if stored else 0:.2f}x)", str(store.root))
    chunks = read_table(s.home, "source_chunks")
    if chunks is not None:
        table.add_row("source_chunks", f"{len(chunks):,} chunks, {int(chunks['truncated'].sum())} truncated",
                      str(table_path(s.home, "source_chunks")))
        try:
            from nova_pipeline.core.embedding import bundled_fingerprint
            from nova_pipeline.core.vector_store import get_collection, open_client

            col = get_collection(open_client(s.home, s.chroma_url), bundled_fingerprint(), create=False)
            table.add_row("vector_index", f"{col.count():,} vectors in collection {col.name}",
                          s.chroma_url or str(s.home / "vectors"))
        except NovaError as exc:
            table.add_row("vector_index", f"[red]{exc}", s.chroma_url or str(s.home / "vectors"))
    console.print(table)
    if s.source_dir is not None:
        console.print(f"source: {s.source_dir}")
    console.print('search it: nova search "your question" -k 5')


@app.command()
def search(
    query: str = typer.Argument(..., help="what to look for, in words or code"),
    k: int = typer.Option(5, "-k", "--top", help="number of hits"),
    as_json: bool = typer.Option(False, "--json", help="print the hits as a JSON list"),
) -> None:
    """Semantic search over the index built by the rebuild job (same NOVA_HOME / NOVA_CHROMA_URL)."""
    from nova_pipeline.core.search import search as run_search

    with console.status("searching…", spinner="dots") if not as_json else _nullcontext():
        hits = run_search(query, k, settings=_settings())
    if as_json:
        print(json.dumps([
            {"path": h.path, "start_line": h.start_line, "end_line": h.end_line, "symbol": h.symbol,
             "language": h.language, "score": round(h.score, 4), "snippet": h.snippet(), "chunk_id": h.chunk_id}
            for h in hits
        ], indent=1))
        return
    for rank, h in enumerate(hits, 1):
        symbol = f"  [bold]{h.symbol}[/bold]" if h.symbol else ""
        console.print(f"{rank}. [cyan]{h.path}:{h.start_line}-{h.end_line}[/cyan]{symbol}  score {h.score:.3f}")
        for line in h.snippet().splitlines():
            console.print(f"     {line}", markup=False, highlight=False)


@app.command()
def resume(run_id: str = typer.Argument(..., help="id of the failed run")) -> None:
    """Re-execute a failed run from failure, using the Dagster instance of DAGSTER_HOME."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise NovaError(f"no run {run_id} in the Dagster instance at {instance.root_directory}; "
                            "check DAGSTER_HOME")
        options = dg.ReexecutionOptions.from_failure(run_id, instance)
        result = dg.execute_job(dg.reconstructable(_job_for_resume), instance=instance,
                                reexecution_options=options, tags={"nova/resumed_from": run_id})
        console.print(f"run {result.run_id} ({'success' if result.success else 'failed'}), "
                      f"re-executing {run.job_name} from the failure of {run_id}")
        if not result.success:
            raise typer.Exit(1)


def _job_for_resume():
    from nova_pipeline.definitions import defs

    return defs.get_job_def("rebuild")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    """Entry point of the ``nova`` console script; NovaError becomes a one-line message and exit code 2."""
    try:
        app()
    except NovaError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()

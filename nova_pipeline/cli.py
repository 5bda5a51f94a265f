"""The ``nova`` command: status, search, resume, golden copies and backups."""

from __future__ import annotations

import contextlib
import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from nova_pipeline.core.backup import DEFAULT_KEEP
from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.scanning import DELETED
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import FREQUENT_PATTERNS, SOURCE_CHUNKS, SOURCE_FILES, read_table, table_path

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
    manifest = read_table(s.layout, SOURCE_FILES)
    if manifest is None:
        console.print(f"[yellow]Nothing built yet under {s.home}: run the rebuild job "
                      "(make rebuild, or dagster job execute -m nova_pipeline.definitions -j rebuild).")
        raise typer.Exit(1)
    table = Table(title=f"nova_pipeline state in {s.home}")
    for col in ("asset", "what", "where"):
        table.add_column(col)
    live = manifest[manifest["status"] != DELETED]
    counts = manifest["status"].value_counts().to_dict()
    table.add_row(
        "source_files",
        f"{len(live):,} files, {int(live['size'].sum()):,} bytes; "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        str(table_path(s.layout, SOURCE_FILES)),
    )
    patterns = read_table(s.layout, FREQUENT_PATTERNS)
    if patterns is not None:
        table.add_row(
            "frequent_patterns", f"{len(patterns)} patterns", str(table_path(s.layout, FREQUENT_PATTERNS))
        )
    info = DictionaryRegistry(s.home).current()
    if info is not None:
        what = (
            f"{info.size:,} B, held-out ratio {info.ratio_with:.2f}x vs {info.ratio_without:.2f}x without"
            if info.blake3
            else f"none ({info.reason})"
        )
        table.add_row("compression_dictionary", what, str(DictionaryRegistry(s.home).dir))
    store = ContentStore(s.home)
    if store.index_path.exists():
        idx = store.index()
        raw, stored = int(idx["size"].sum()), int(idx["stored_size"].sum())
        table.add_row(
            "compressed_store",
            f"{len(idx):,} objects, {raw:,} -> {stored:,} bytes ({raw / stored if stored else 0:.2f}x)",
            str(store.root),
        )
    chunks = read_table(s.layout, SOURCE_CHUNKS)
    if chunks is not None:
        table.add_row(
            "source_chunks",
            f"{len(chunks):,} chunks, {int(chunks['truncated'].sum())} truncated",
            str(table_path(s.layout, SOURCE_CHUNKS)),
        )
        try:
            from nova_pipeline.core.embedding import bundled_fingerprint
            from nova_pipeline.core.vector_store import get_collection, open_client

            col = get_collection(open_client(s.home, s.chroma_url), bundled_fingerprint(), create=False)
            table.add_row(
                "vector_index",
                f"{col.count():,} vectors in collection {col.name}",
                s.chroma_url or str(s.layout.vectors),
            )
        except NovaError as exc:
            table.add_row("vector_index", f"[red]{exc}", s.chroma_url or str(s.layout.vectors))
    from nova_pipeline.core import backup, golden

    cur = golden.current_version(s.home)
    if cur is not None:
        table.add_row(
            "golden_copy",
            f"CURRENT {cur.name}: {cur.count:,} vectors, {cur.files} files, "
            f"{len(golden.list_versions(s.home))} versions kept",
            str(cur.path),
        )
    from nova_pipeline.core.failover import FailoverSettings, estimate_for_version, read_state

    state = read_state(s.home)
    where = (
        f"[yellow]FAILED OVER to the backup store ({state.backup_kind}) since {state.since}: {state.reason}; "
        f"searches are stale as of {state.backup_created_at}"
        if state.failed_over
        else f"primary active, breaker {state.breaker}"
    )
    if cur is not None:
        est = estimate_for_version(cur, max_memory_mb=FailoverSettings.from_env().max_memory_mb)
        where += (
            f"; a backup would need {est.required_bytes / 2**20:,.0f} MB "
            f"({est.bytes_per_chunk:,.0f} B/chunk, "
            f"zone {est.zone}): {est.choice}"
        )
    table.add_row("failover", where, str(s.layout.failover))
    found = backup.list_backups(s.home)
    if found:
        table.add_row(
            "backups",
            f"{len(found)} backups, newest {found[0].id} ({found[0].size:,} bytes)",
            str(backup.backups_dir(s.home)),
        )
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

    with console.status("searching…", spinner="dots") if not as_json else contextlib.nullcontext():
        hits = run_search(query, k, settings=_settings())
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "path": h.path,
                        "start_line": h.start_line,
                        "end_line": h.end_line,
                        "symbol": h.symbol,
                        "language": h.language,
                        "score": round(h.score, 4),
                        "snippet": h.snippet(),
                        "chunk_id": h.chunk_id,
                        "store": h.store,
                        "stale_as_of": h.stale_as_of,
                    }
                    for h in hits
                ],
                indent=1,
            )
        )
        return
    if hits and hits[0].store == "backup":
        console.print(
            f"[yellow]answered by the backup store: stale as of {hits[0].stale_as_of} "
            "(the primary is down or failed over)"
        )
    for rank, h in enumerate(hits, 1):
        symbol = f"  [bold]{h.symbol}[/bold]" if h.symbol else ""
        console.print(
            f"{rank}. [cyan]{h.path}:{h.start_line}-{h.end_line}[/cyan]{symbol}  score {h.score:.3f}"
        )
        for line in h.snippet().splitlines():
            console.print(f"     {line}", markup=False, highlight=False)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind (loopback by default)"),
    port: int = typer.Option(8765, help="TCP port"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve search over HTTP with failover: GET /search?q=&k=, /healthz, /status."""
    import uvicorn

    from nova_pipeline.core.failover import FailoverSettings
    from nova_pipeline.service.app import create_app

    app_ = create_app(_settings(), FailoverSettings.from_env())
    console.print(f"nova serve on http://{host}:{port}  (GET /search?q=...&k=5, /healthz, /status)")
    uvicorn.run(app_, host=host, port=port, log_level=log_level)


@app.command()
def plan(
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete", help="plan as a run with the mass-deletion override would"
    ),
) -> None:
    """Dry run of the rebuild job: files added, changed and deleted; chunks to embed; vectors to delete;
    whether a golden version would be promoted; whether the mass-deletion guard would refuse.
    Writes nothing."""
    from dataclasses import asdict

    from nova_pipeline.core.guard import DeletionGuard
    from nova_pipeline.core.plan import make_plan, plan_table

    s = Settings.from_env(require_source=False)
    if s.source_dir is None:
        raise NovaError("NOVA_SOURCE_DIR is not set: export NOVA_SOURCE_DIR=/path/to/the/tree/to/index")
    with console.status("planning…") if not as_json else contextlib.nullcontext():
        p = make_plan(s, DeletionGuard(allow=allow_mass_delete))
    if as_json:
        print(json.dumps(asdict(p), indent=1))
    else:
        table = Table(title=f"rebuild plan for {p.source_dir}")
        for col in ("what", "count", "e.g."):
            table.add_column(col)
        for row in plan_table(p).itertuples(index=False):
            table.add_row(str(row[0]), f"{row[1]:,}" if isinstance(row[1], int) else str(row[1]), str(row[2]))
        console.print(table)
        console.print(f"golden copy: {p.golden}")
        for note in p.notes:
            console.print(f"[dim]{note}", highlight=False)
        for r in p.refusals:
            console.print(f"[red]refused:[/red] {r}", highlight=False)
    if p.refused:
        raise typer.Exit(1)


@app.command()
def resume(
    run_id: str = typer.Argument(..., help="id of the failed run"),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete", help="let the re-executed run delete most of the index"
    ),
) -> None:
    """Re-execute a failed run from failure, using the Dagster instance of DAGSTER_HOME."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise NovaError(
                f"no run {run_id} in the Dagster instance at {instance.root_directory}; check DAGSTER_HOME"
            )
        options = dg.ReexecutionOptions.from_failure(run_id, instance)
        run_config = dict(run.run_config or {})
        if allow_mass_delete:
            run_config["resources"] = {
                **run_config.get("resources", {}),
                "guard": {"config": {"allow_mass_delete": True}},
            }
        job = dg.build_reconstructable_job("nova_pipeline.cli", "job_for_resume", (run.job_name,))
        result = dg.execute_job(
            job,
            instance=instance,
            run_config=run_config,
            reexecution_options=options,
            tags={"nova/resumed_from": run_id},
        )
        console.print(
            f"run {result.run_id} ({'success' if result.success else 'failed'}), "
            f"re-executing {run.job_name} from the failure of {run_id}"
        )
        if not result.success:
            raise typer.Exit(1)


golden_app = typer.Typer(
    help="Golden copies: list, verify, reset the index from CURRENT.", no_args_is_help=True
)
backup_app = typer.Typer(help="Backups: create, list, verify, restore.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")
app.add_typer(backup_app, name="backup")


def _report(what: str, failures: list[str]) -> None:
    """Print verification failures and the verdict; exit 1 when anything failed."""
    for f in failures:
        console.print(f"[red]{f}", highlight=False)
    console.print(f"{what}: " + ("[green]verified" if not failures else f"[red]{len(failures)} problems"))
    if failures:
        raise typer.Exit(1)


@golden_app.command("list")
def golden_list() -> None:
    """Committed golden versions, oldest first; * marks CURRENT."""
    from nova_pipeline.core import golden

    s = _settings()
    cur = golden.current_version(s.home)
    for v in golden.list_versions(s.home):
        mark = "*" if cur and v.name == cur.name else " "
        console.print(f"{mark} {v.name}  {v.count:,} vectors  {v.files} files  {v.bytes:,} bytes  {v.path}")


@golden_app.command("verify")
def golden_verify() -> None:
    """Check every file of the CURRENT golden version against its manifest."""
    from nova_pipeline.core import golden

    s = _settings()
    cur = golden.current_version(s.home)
    if cur is None:
        raise NovaError(f"no golden copy under {golden.golden_root(s.home)}: run the rebuild job")
    failures = golden.verify_tree(cur.path)
    _report(f"golden version {cur.name}", failures)


@golden_app.command("reset")
def golden_reset(
    yes: bool = typer.Option(False, "--yes", help="confirm: replace the index from the golden copy"),
) -> None:
    """Rebuild the primary index from the CURRENT golden copy without re-embedding (audited)."""
    from nova_pipeline.core import audit, golden

    s = _settings()
    entry = golden.reset_index(s.home, s.chroma_url, yes, audit.actor())
    console.print(
        f"reset from golden version {entry['details']['version']}: {entry['details']['count']:,} vectors "
        f"({entry['outcome']})"
    )


@backup_app.command("create")
def backup_create(keep: int = typer.Option(DEFAULT_KEEP, help="verified backups to keep")) -> None:
    """Back up the CURRENT golden copy and its store objects, and the Dagster database when the instance of
    DAGSTER_HOME is on PostgreSQL (the same as the `backup` job)."""
    from nova_pipeline.core import backup

    pg_url = _instance_postgres_url()
    with console.status("writing backup…"):
        r = backup.create_backup(_settings().home, pg_url, keep=keep)
    console.print(
        f"backup {r.info.id}: {r.members} members, {r.bytes:,} -> {r.info.size:,} bytes in "
        f"{r.seconds:.1f} s  {r.info.path}; pg_dump: {r.pg_dump}"
    )
    if r.pg_dump.startswith("failed"):
        raise typer.Exit(1)


@backup_app.command("list")
def backup_list() -> None:
    """Published backups, newest first."""
    from nova_pipeline.core import backup

    for b in backup.list_backups(_settings().home):
        console.print(f"{b.id}  {b.size:,} bytes  {b.path}")


@backup_app.command("verify")
def backup_verify(
    backup_id: str = typer.Argument(None, help="backup id (default: the newest)"),
    level: int = typer.Option(2, "--level", min=1, max=3, help="1 structure, 2 full read, 3 restore drill"),
) -> None:
    """Verify a backup at level 1, 2 or 3."""
    from nova_pipeline.core import backup

    s = _settings()
    newest = backup.newest_backup(s.home)
    if newest is None:
        raise NovaError(f"no backups under {backup.backups_dir(s.home)}: nova backup create")
    bid = backup_id or newest.id
    with console.status(f"verifying {bid} at level {level}…"):
        failures = backup.verify(s.home, bid, level, _instance_postgres_url())
    _report(f"backup {bid} level {level}", failures)


@backup_app.command("restore")
def backup_restore(
    backup_id: str = typer.Argument(..., help="backup id"),
    yes: bool = typer.Option(False, "--yes", help="confirm: replace the golden copy and index"),
) -> None:
    """Restore a backup: verify it in a new location, switch atomically, rebuild the index (audited)."""
    from nova_pipeline.core import audit, backup

    s = _settings()
    with console.status(f"restoring {backup_id}…"):
        entry = backup.restore(s.home, backup_id, yes, audit.actor(), s.chroma_url)
    console.print(
        f"restored backup {backup_id}: golden version {entry['details']['golden_version']}, "
        f"{entry['details']['vectors']:,} vectors"
    )


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


def _instance_postgres_url() -> str | None:
    """The Postgres URL of the Dagster instance of DAGSTER_HOME, or None (not set, or not on Postgres)."""
    import os

    if not os.environ.get("DAGSTER_HOME"):
        return None
    import dagster as dg

    from nova_pipeline.instance import postgres_url

    with dg.DagsterInstance.get() as instance:
        return postgres_url(instance)


def main() -> None:
    """Entry point of the ``nova`` console script; NovaError becomes a one-line message and exit code 2."""
    try:
        app()
    except NovaError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()

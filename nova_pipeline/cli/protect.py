"""Golden copies and backups: list, verify, reset, create, restore."""

from __future__ import annotations

import typer

from nova_pipeline.cli.common import app, console, instance_postgres_url, settings_from_env
from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.protect.backup.archive import DEFAULT_KEEP

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
    from nova_pipeline.core.protect import golden

    s = settings_from_env()
    cur = golden.current_version(s.home)
    for v in golden.list_versions(s.home):
        mark = "*" if cur and v.name == cur.name else " "
        console.print(f"{mark} {v.name}  {v.count:,} vectors  {v.files} files  {v.bytes:,} bytes  {v.path}")


@golden_app.command("verify")
def golden_verify() -> None:
    """Check every file of the CURRENT golden version against its manifest."""
    from nova_pipeline.core.protect import golden

    s = settings_from_env()
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
    from nova_pipeline.core.protect import audit, golden

    s = settings_from_env()
    entry = golden.reset_index(s.home, s.chroma_url, yes, audit.actor())
    console.print(
        f"reset from golden version {entry['details']['version']}: {entry['details']['count']:,} vectors "
        f"({entry['outcome']})"
    )


@backup_app.command("create")
def backup_create(keep: int = typer.Option(DEFAULT_KEEP, help="verified backups to keep")) -> None:
    """Back up the CURRENT golden copy and its store objects (the same as the `backup` job).

    The Dagster database is included when the instance of DAGSTER_HOME is on PostgreSQL."""
    from nova_pipeline.core.protect import backup

    pg_url = instance_postgres_url()
    with console.status("writing backup…"):
        r = backup.create_backup(settings_from_env().home, pg_url, keep=keep)
    console.print(
        f"backup {r.info.id}: {r.members} members, {r.bytes:,} -> {r.info.size:,} bytes in "
        f"{r.seconds:.1f} s  {r.info.path}; pg_dump: {r.pg_dump}"
    )
    if r.pg_dump.startswith("failed"):
        raise typer.Exit(1)


@backup_app.command("list")
def backup_list() -> None:
    """Published backups, newest first."""
    from nova_pipeline.core.protect import backup

    for b in backup.list_backups(settings_from_env().home):
        console.print(f"{b.id}  {b.size:,} bytes  {b.path}")


@backup_app.command("verify")
def backup_verify(
    backup_id: str = typer.Argument(None, help="backup id (default: the newest)"),
    level: int = typer.Option(2, "--level", min=1, max=3, help="1 structure, 2 full read, 3 restore drill"),
) -> None:
    """Verify a backup at level 1, 2 or 3."""
    from nova_pipeline.core.protect import backup

    s = settings_from_env()
    newest = backup.newest_backup(s.home)
    if newest is None:
        raise NovaError(f"no backups under {backup.backups_dir(s.home)}: nova backup create")
    bid = backup_id or newest.id
    with console.status(f"verifying {bid} at level {level}…"):
        failures = backup.verify(s.home, bid, level, instance_postgres_url())
    _report(f"backup {bid} level {level}", failures)


@backup_app.command("restore")
def backup_restore(
    backup_id: str = typer.Argument(..., help="backup id"),
    yes: bool = typer.Option(False, "--yes", help="confirm: replace the golden copy and index"),
) -> None:
    """Restore a backup: verify it in a new location, switch atomically, rebuild the index (audited)."""
    from nova_pipeline.core.protect import audit, backup

    s = settings_from_env()
    with console.status(f"restoring {backup_id}…"):
        entry = backup.restore(s.home, backup_id, yes, audit.actor(), s.chroma_url)
    console.print(
        f"restored backup {backup_id}: golden version {entry['details']['golden_version']}, "
        f"{entry['details']['vectors']:,} vectors"
    )

"""Live updates and watching runs: nova watch, nova monitor."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import typer

from nova_pipeline.cli.common import app, console, settings_from_env
from nova_pipeline.core.errors import NovaError

log = logging.getLogger("nova_pipeline.cli.live")


def start_watching(source: str | None, as_json: bool, poll: bool | None, settle_ms: int, embedder=None):
    """Build the live index and its watcher for ``source`` (default ``NOVA_SOURCE_DIR``), with the runless
    event reporter when ``DAGSTER_HOME`` is set; returns ``(watcher, close)`` (call ``watcher.run()`` in
    the thread that should block, ``close()`` after it returns)."""
    from pathlib import Path

    from nova_pipeline.core.index.embedding import LazyEmbedder
    from nova_pipeline.core.live.updater import LiveIndex
    from nova_pipeline.core.live.watcher import Watcher, promote_after_s
    from nova_pipeline.core.serving.model_switch import model_dir_for
    from nova_pipeline.core.settings import Settings

    if source:
        os.environ["NOVA_SOURCE_DIR"] = str(Path(source).expanduser().resolve())
    settings = Settings.from_env(require_source=True)

    def active_model():  # the model searches use (nova model switch's pointer), followed on a switch
        return LazyEmbedder(model_dir_for(settings.home), home=settings.home)

    live = LiveIndex(
        settings, embedder or active_model(), make_embedder=active_model if embedder is None else None
    )
    reporter = None
    if os.environ.get("DAGSTER_HOME"):
        import dagster as dg

        from nova_pipeline.deploy.live_events import LiveEventReporter

        instance = dg.DagsterInstance.get()
        reporter = LiveEventReporter(instance)
    else:
        console.print("[yellow]DAGSTER_HOME is not set: updates are not reported to a Dagster instance")

    def on_report(report) -> None:
        if reporter is not None:
            reporter.submit(report)
        if as_json:
            print(
                json.dumps({**report.metadata(), "paths": report.paths, "refused": report.refused}),
                flush=True,
            )
        elif report.kind != "unchanged":
            style = "[red]" if report.refused else ""
            console.print(f"{time.strftime('%H:%M:%S')} {style}{report.line()}", highlight=False)

    promotion: list[subprocess.Popen] = []

    def promote() -> None:
        if not os.environ.get("DAGSTER_HOME"):
            log.warning("quiet: no golden promotion without DAGSTER_HOME (a rebuild run promotes)")
            return
        if promotion and promotion[-1].poll() is None:
            return  # the last one is still running
        console.print(
            f"{time.strftime('%H:%M:%S')} quiet: starting a rebuild run to promote a golden version"
        )
        promotion.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nova_pipeline.cli",
                    "rebuild",
                    "--source",
                    str(settings.source_dir),
                    "-q",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    watcher = Watcher(
        live,
        on_report,
        settle_ms=settle_ms,
        force_polling=poll,
        promote=promote,
        promote_after_s=promote_after_s(),
    )

    def close() -> None:
        if reporter is not None:
            reporter.close()
            reporter.instance.dispose()
        live.close()

    return watcher, close


@app.command()
def watch(
    source: str = typer.Option(None, "--source", help="the tree to keep live (default: NOVA_SOURCE_DIR)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON line per update"),
    poll: bool = typer.Option(
        None, "--poll/--events", help="poll the tree instead of file events (network mounts); default: events"
    ),
    settle_ms: int = typer.Option(20, "--settle-ms", min=1, help="quiet time that ends a batch of events"),
) -> None:
    """Keep the index live: every save is searchable within a fraction of a second.

    Catches up first (like an unchanged rebuild: nothing cached is embedded again), then applies each batch
    of file events through the same functions the assets use, and reports each update to the Dagster
    instance as runless materializations. A golden version is promoted by a rebuild run once the tree has
    been quiet for NOVA_LIVE_PROMOTE_AFTER seconds (600). Ctrl-C or SIGTERM stops after the current update;
    a second one stops at once (the next start catches up)."""
    from nova_pipeline.cli import logs

    home = settings_from_env().home
    logs.configure(home, logs.resolve_level(None, "WARNING"))
    watcher, close = start_watching(source, as_json, poll, settle_ms)
    signals = [0]

    def on_signal(signum, frame) -> None:
        signals[0] += 1
        if signals[0] > 1:
            os._exit(130)  # safe: every write is atomic, and the next start catches up
        console.print("stopping after the current update (again to stop at once)")
        watcher.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if not as_json:
        console.print(f"watching {watcher.live.settings.source_dir} (NOVA_HOME={home})")
    try:
        watcher.run()
    finally:
        close()


def watch_in_thread(source: str | None = None, settle_ms: int = 20):
    """``nova serve --watch``: the watcher in a daemon thread of this process; returns ``(watcher, stop)``."""
    watcher, close = start_watching(source, False, None, settle_ms)
    thread = threading.Thread(target=watcher.run, name="nova-watch", daemon=True)
    thread.start()

    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        watcher.stop()
        thread.join(timeout=60)
        close()
        console.print(
            "stopped watching" if not thread.is_alive() else "[red]the watcher did not stop within 60 s"
        )

    return watcher, stop


@app.command()
def monitor(
    run_id: str = typer.Argument(None, help="the run (a unique prefix is enough); default: the newest run"),
    poll_s: float = typer.Option(0.5, "--poll", help="seconds between reads of the event log"),
) -> None:
    """Follow a run in flight, whoever launched it (the daemon, a schedule, the admin API): the same
    per-phase progress as nova rebuild, read from the run's event log. Exits with the run's outcome."""
    import dagster as dg

    from nova_pipeline.cli.common import require_dagster_home
    from nova_pipeline.cli.progress import RebuildDisplay
    from nova_pipeline.deploy.run_progress import FINISHED
    from nova_pipeline.deploy.runs import resolve_run

    require_dagster_home()
    with dg.DagsterInstance.get() as instance:
        if run_id:
            run = resolve_run(instance, run_id)
        else:
            runs = instance.get_runs(limit=1)
            if not runs:
                raise NovaError("no run in the Dagster instance yet")
            run = runs[0]
        console.print(f"run {run.run_id} ({run.job_name}): {run.status.value}", highlight=False)
        display = RebuildDisplay(console, live=console.is_terminal)
        cursor = None
        with display:
            while True:
                conn = instance.get_records_for_run(run.run_id, cursor=cursor, limit=1000)
                for record in conn.records:
                    display.on_record(_as_log_record(record, run.run_id))
                cursor = conn.cursor
                if conn.has_more:
                    continue
                status = instance.get_run_by_id(run.run_id).status
                if status in FINISHED:
                    conn = instance.get_records_for_run(run.run_id, cursor=cursor, limit=1000)
                    for record in conn.records:
                        display.on_record(_as_log_record(record, run.run_id))
                    break
                time.sleep(poll_s)
    console.print(display.summary())
    console.print(f"run {run.run_id}: {status.value}", highlight=False)
    if status != dg.DagsterRunStatus.SUCCESS:
        raise typer.Exit(1)


def _as_log_record(record, run_id: str) -> logging.LogRecord:
    """An event log record as the log record ``nova rebuild``'s display reads (``dagster_meta``)."""
    entry = record.event_log_entry
    level = entry.level if isinstance(entry.level, int) else logging.getLevelName(str(entry.level).upper())
    level = level if isinstance(level, int) else logging.INFO
    out = logging.LogRecord("nova_monitor", level, "", 0, entry.user_message or "", None, None)
    out.dagster_meta = {"dagster_event": entry.dagster_event, "run_id": run_id}
    return out

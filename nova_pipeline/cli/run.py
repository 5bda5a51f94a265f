"""Running jobs from the command line: resume (and rebuild)."""

from __future__ import annotations

import typer

from nova_pipeline.cli.common import app, console
from nova_pipeline.core.errors import NovaError


@app.command()
def resume(
    run_id: str = typer.Argument(
        ..., help="the failed run's id, or a unique prefix (the 8 characters the UI shows)"
    ),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete", help="let the re-executed run delete most of the index"
    ),
) -> None:
    """Re-execute a failed run from failure, using the Dagster instance of DAGSTER_HOME.

    A run still marked STARTED whose process is gone (killed, crashed) is marked failed first, saying why; a
    run whose process still runs is refused."""
    import dagster as dg

    from nova_pipeline.cli.common import require_dagster_home
    from nova_pipeline.deploy.runs import PID_TAG, find_dead_runs, reap_dead_runs, resolve_run

    require_dagster_home()
    with dg.DagsterInstance.get() as instance:
        run = resolve_run(instance, run_id)
        run_id = run.run_id
        if run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
            if any(d.run_id == run_id for d in find_dead_runs(instance)):
                reap_dead_runs(instance)
                run = instance.get_run_by_id(run_id)
            else:
                where = f"process {run.tags[PID_TAG]}" if PID_TAG in run.tags else "a process"
                raise NovaError(
                    f"run {run_id} is still running ({where}): wait for it, or stop it, then resume"
                )
        if run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            raise NovaError(f"run {run_id} is {run.status.value}: only a failed or canceled run is resumed")
        options = dg.ReexecutionOptions.from_failure(run_id, instance)
        run_config = dict(run.run_config or {})
        if allow_mass_delete:
            run_config["resources"] = {
                **run_config.get("resources", {}),
                "guard": {"config": {"allow_mass_delete": True}},
            }
        from nova_pipeline.deploy.runs import process_tags

        job = dg.build_reconstructable_job("nova_pipeline.cli.common", "job_for_resume", (run.job_name,))
        result = dg.execute_job(
            job,
            instance=instance,
            run_config=run_config,
            reexecution_options=options,
            tags={"nova/resumed_from": run_id, **process_tags()},
        )
        console.print(
            f"run {result.run_id} ({'success' if result.success else 'failed'}), "
            f"re-executing {run.job_name} from the failure of {run_id}"
        )
        if not result.success:
            raise typer.Exit(1)


@app.command()
def rebuild(
    source: str = typer.Option(None, "--source", help="the tree to index (default: NOVA_SOURCE_DIR)"),
    log_level: str = typer.Option(
        None,
        "--log-level",
        help="console level: DEBUG, INFO, WARNING, ERROR (default: NOVA_LOG_LEVEL, else WARNING)",
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="also print Dagster's own event lines"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print only errors and the final summary"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON (no live display)"),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete", help="let this run delete most of the index (see the guard)"
    ),
) -> None:
    """Run the `rebuild` job in this process on the instance of DAGSTER_HOME, with live progress per phase.

    The run is in run storage and the UI like any other, and `nova resume RUN_ID` re-executes it from a
    failure. The exit code is 1 when the run fails or a blocking check fails.
    """
    import json
    import os
    from pathlib import Path

    import dagster as dg

    from nova_pipeline.cli import logs
    from nova_pipeline.cli.common import require_dagster_home, search_hint, settings_from_env
    from nova_pipeline.cli.progress import RebuildDisplay
    from nova_pipeline.deploy import run_events
    from nova_pipeline.deploy.runs import process_tags, reap_dead_runs

    require_dagster_home()
    if source:
        src = Path(source).expanduser().resolve()
        os.environ["NOVA_SOURCE_DIR"] = str(src)  # before the definitions are loaded, which read it
    level = logs.resolve_level(log_level, "ERROR" if quiet else "WARNING")
    home = settings_from_env().home
    logs.configure(home, level)
    loggers = {"nova_events": {}}
    if verbose:
        loggers["console"] = {"config": {"log_level": "DEBUG"}}
    run_config: dict = {"loggers": loggers}
    if allow_mass_delete:
        run_config["resources"] = {"guard": {"config": {"allow_mass_delete": True}}}
    display = RebuildDisplay(
        console, live=console.is_terminal and not as_json and not verbose, quiet=quiet or as_json
    )
    job = dg.build_reconstructable_job("nova_pipeline.cli.common", "job_for_resume", ("rebuild",))
    unsubscribe = run_events.subscribe(display.on_record)
    try:
        with dg.DagsterInstance.get() as instance:
            for dead in reap_dead_runs(instance):  # their pool slots would keep this run waiting
                console.print(
                    f"[yellow]run {dead.run_id[:8]} ({dead.job_name}): {dead.reason}; marked failed, "
                    f"its slots freed (nova resume {dead.run_id[:8]})",
                    highlight=False,
                )
            with display:
                result = dg.execute_job(
                    job,
                    instance=instance,
                    run_config=run_config,
                    tags={"nova/command": "nova rebuild", **process_tags()},
                )
    finally:
        unsubscribe()
    blocking = display.failed_checks()
    failed = not result.success or bool(blocking)
    if as_json:
        print(
            json.dumps(
                {
                    **display.as_json(),
                    "run_id": result.run_id,
                    "success": not failed,
                    "failed_blocking_checks": blocking,
                },
                indent=1,
                default=str,
            )
        )
    else:
        console.print(display.summary())
        for step, error in display.failures:
            console.print(f"[red]step {step} failed:[/red] {error}", highlight=False)
        for check in blocking:
            console.print(f"[red]blocking check failed:[/red] {check}", highlight=False)
        if failed:
            console.print(f"resume it, once fixed: [bold]nova resume {result.run_id}[/bold]")
        else:
            console.print(f"run {result.run_id} succeeded; search it: {search_hint(home)}", highlight=False)
    if failed:
        raise typer.Exit(1)

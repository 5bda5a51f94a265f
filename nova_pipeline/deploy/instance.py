"""What nova_pipeline needs to know about the Dagster instance (``DAGSTER_HOME/dagster.yaml``).

Dagster-side helpers shared by the assets, the CLI and the service; ``core`` never imports this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _resolve_env(value: Any) -> Any:
    """Replace Dagster's ``{"env": NAME}`` config values by the variable's value (empty when unset)."""
    if isinstance(value, Mapping):
        if set(value) == {"env"}:
            return os.environ.get(str(value["env"]), "")
        return {k: _resolve_env(v) for k, v in value.items()}
    return value


def postgres_url(instance) -> str | None:
    """The ``postgresql://`` URL of the instance's database, from its config, or None when it does not use
    PostgreSQL (e.g. the default SQLite instance).

    Reads the storage section of the instance's ``dagster.yaml`` (``storage: postgres:`` or
    ``run_storage: ...PostgresRunStorage``) through the instance ref, resolving ``env:`` values the way
    Dagster does (``DAGSTER_PG_*`` in this project's ``dagster.postgres.yaml``), and builds the URL with
    dagster-postgres' own ``pg_url_from_config``.
    """
    ref = instance.get_ref()
    for data in (ref.storage_data, ref.run_storage_data):
        if data is None or not data.module_name.startswith("dagster_postgres"):
            continue
        from dagster_postgres.utils import pg_url_from_config

        config = _resolve_env(dict(data.config_dict))
        return pg_url_from_config(config)
    return None


def last_run(instance, job_name: str) -> tuple[str | None, float | None]:
    """``(status, start time)`` of the newest run of ``job_name``, or ``(None, None)``."""
    import dagster as dg

    runs = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name), limit=1)
    if not runs:
        return None, None
    r = runs[0]
    return r.dagster_run.status.value, r.start_time or r.create_timestamp.timestamp()


def last_materializations(instance, asset_keys) -> dict[str, dict]:
    """``{asset: {"at": timestamp, "metadata": {...plain values}}}`` of each asset's newest
    materialization."""
    import dagster as dg

    out = {}
    for key in asset_keys:
        ev = instance.get_latest_materialization_event(dg.AssetKey(key))
        if ev is None:
            continue
        mat = ev.asset_materialization
        out[key] = {
            "at": ev.timestamp,
            "metadata": {
                k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float, str, bool))
            },
        }
    return out


def launch_job(
    job_name: str, run_config: dict | None = None, tags: dict | None = None, timeout: float = 300
) -> str:
    """Submit a run of ``job_name`` to the instance of ``DAGSTER_HOME``, as ``dagster job launch`` does (the
    instance's run coordinator queues or launches it; the daemon dequeues queued runs); returns its run id.

    Raises:
        RuntimeError: ``DAGSTER_HOME`` is unset, or the launch failed (its error in the message).
    """
    import json
    import subprocess
    import sys
    import uuid

    if not os.environ.get("DAGSTER_HOME"):
        raise RuntimeError("DAGSTER_HOME is not set: this process cannot submit runs to a Dagster instance")
    run_id = str(uuid.uuid4())
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "launch",
        "-m",
        "nova_pipeline.definitions",
        "-j",
        job_name,
        "--run-id",
        run_id,
    ]
    if run_config:
        cmd += ["--config-json", json.dumps(run_config)]
    if tags:
        cmd += ["--tags", json.dumps(tags)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"launching {job_name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return run_id


QUEUED_RUN_DAEMON = "QUEUED_RUN_COORDINATOR"  # Dagster's QueuedRunCoordinatorDaemon.daemon_type()
NO_DAEMON = (
    "dagster-daemon run: the instance queues runs and no daemon is running on it, so this run starts only "
    "when one does (or use a DefaultRunCoordinator in dagster.yaml to start runs at once)"
)


def _queued_runs_wait_for_a_daemon(instance) -> bool:
    """True when the instance queues runs (``QueuedRunCoordinator``) and no daemon has dequeued them lately:
    Dagster's own daemon status (``DagsterInstance.get_daemon_statuses``) finds no heartbeat of the
    queued-run daemon within its default tolerance."""
    status = instance.get_daemon_statuses([QUEUED_RUN_DAEMON]).get(QUEUED_RUN_DAEMON)
    return bool(status is not None and status.required and not status.healthy)


def run_status(instance, run_id: str) -> dict | None:
    """``{"run_id", "job", "status", "start", "end"}`` of a run, or None; a queued run on an instance whose
    daemon is not running also has ``waiting_for`` (what to start)."""
    import dagster as dg

    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run_id]), limit=1)
    if not records:
        return None
    r = records[0]
    out = {
        "run_id": run_id,
        "job": r.dagster_run.job_name,
        "status": r.dagster_run.status.value,
        "start": r.start_time,
        "end": r.end_time,
    }
    if r.dagster_run.status == dg.DagsterRunStatus.QUEUED and _queued_runs_wait_for_a_daemon(instance):
        out["waiting_for"] = NO_DAEMON
    return out


def schedule_running(instance, name: str) -> bool:
    """Whether the schedule ``name`` is turned on in the instance (its state, as the UI's toggle sets it)."""
    for state in instance.all_instigator_state():
        if state.name == name and getattr(state.status, "value", str(state.status)) in (
            "RUNNING",
            "DECLARED_IN_CODE",
        ):
            return True
    return False


def run_facts(
    instance, backup_schedule: str | None = None, backup_interval_s: float = 86400.0, reap: bool = True
):
    """What ``nova health`` needs from the instance (:class:`~nova_pipeline.core.serving.health.RunFacts`):
    the last ``rebuild``, whether ``backup_schedule`` runs, the runs found dead (failed and their slots freed
    now, when ``reap``), and the writer pool's claimed slots."""
    import dagster as dg

    from nova_pipeline.core.serving.health import RunFacts
    from nova_pipeline.deploy.runs import claimed_slots, find_dead_runs, reap_dead_runs

    dead = reap_dead_runs(instance) if reap else find_dead_runs(instance)
    live = {
        r.dagster_run.run_id
        for r in instance.get_run_records(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
        )
    }
    schedule = (schedule_running(instance, backup_schedule), backup_interval_s) if backup_schedule else None
    return RunFacts(
        last_rebuild=last_run(instance, "rebuild"),
        backup_schedule=schedule,
        dead_runs=[(d.run_id, d.job_name, d.reason) for d in dead],
        claimed_slots=claimed_slots(instance),
        live_runs=live,
    )

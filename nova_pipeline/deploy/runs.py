"""Runs whose process died: found, failed with the reason, their pool slots freed, so they can be resumed.

Dagster's run monitoring does this for runs a run launcher started (the daemon's). A run that ``nova rebuild``
or ``dagster job execute`` executes in its own process has no launcher watching it: killed with ``kill -9``,
it stayed ``STARTED`` for ever and kept its slot in the ``vector_index_writer`` pool, so that after as many
crashes as the pool's limit every new rebuild waited for a slot for ever. So such a run carries the host and
the process that executes it (run tags :data:`HOST_TAG`, :data:`PID_TAG`, and the process's start time
:data:`STARTED_TAG`, so a reused pid is not taken for the same process), and :func:`reap_dead_runs` finds
the ``STARTED`` runs of this host whose process is gone, reports an engine event that says why, marks them
failed and frees their concurrency slots. ``nova rebuild`` reaps before it runs, ``nova health`` reports
and reaps, and the ``dead_runs`` sensor reaps every minute in a daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import dagster as dg
import psutil

from nova_pipeline.core.errors import NovaError

__all__ = [
    "HOST_TAG",
    "PID_TAG",
    "STARTED_TAG",
    "DeadRun",
    "claimed_slots",
    "find_dead_runs",
    "process_alive",
    "process_tags",
    "reap_dead_runs",
    "resolve_run",
]

log = logging.getLogger(__name__)

HOST_TAG = "nova/host"
PID_TAG = "nova/pid"
STARTED_TAG = "nova/pid_started"  # the process's start time (seconds since the epoch, 2 decimals)
POOL = "vector_index_writer"


def process_tags(pid: int | None = None) -> dict[str, str]:
    """The run tags that name the process executing a run (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        STARTED_TAG: f"{psutil.Process(pid).create_time():.2f}",
    }


def process_alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` runs, and is the one that started at ``started`` (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


@dataclass(frozen=True)
class DeadRun:
    """A ``STARTED`` run whose process is gone."""

    run_id: str
    job_name: str
    pid: int

    @property
    def reason(self) -> str:
        return f"process {self.pid} on {socket.gethostname()} is gone: killed or crashed"


def find_dead_runs(instance: dg.DagsterInstance) -> list[DeadRun]:
    """The runs of this host that are ``STARTED`` (or ``STARTING``) but whose process is gone."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={HOST_TAG: socket.gethostname()},
        )
    )
    dead = []
    for record in records:
        run = record.dagster_run
        try:
            pid = int(run.tags[PID_TAG])
            started = float(run.tags[STARTED_TAG]) if STARTED_TAG in run.tags else None
        except (KeyError, ValueError):
            continue
        if not process_alive(pid, started):
            dead.append(DeadRun(run.run_id, run.job_name, pid))
    return dead


def reap_dead_runs(instance: dg.DagsterInstance) -> list[DeadRun]:
    """Fail every run of :func:`find_dead_runs`, with an engine event saying why, and free its concurrency
    slots; returns them."""
    reaped = find_dead_runs(instance)
    for dead in reaped:
        run = instance.get_run_by_id(dead.run_id)
        if run is None or run.status not in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
            continue  # finished meanwhile
        instance.report_engine_event(
            f"{dead.reason}; marking the run failed (nova resume {dead.run_id[:8]})", run
        )
        instance.report_run_failed(run, dead.reason)
        instance.event_log_storage.free_concurrency_slots_for_run(dead.run_id)
        log.warning(
            "run %s of %s: %s; marked failed, its pool slots freed", dead.run_id, dead.job_name, dead.reason
        )
    return reaped


def claimed_slots(instance: dg.DagsterInstance, pool: str = POOL) -> dict[str, int]:
    """Run id -> slots it holds in ``pool`` (none when the pool was never used)."""
    try:
        info = instance.event_log_storage.get_concurrency_info(pool)
    except Exception as exc:  # noqa: BLE001 - storages without pools answer nothing; reported as none
        log.debug("no concurrency info for %s: %s", pool, exc)
        return {}
    out: dict[str, int] = {}
    for slot in info.claimed_slots:
        out[slot.run_id] = out.get(slot.run_id, 0) + 1
    return out


def resolve_run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    """The run ``run_id`` names: its full id or a unique prefix of it (the 8 characters the UI shows).

    Raises:
        NovaError: no run, or several, start with it (the message names them).
    """
    run = instance.get_run_by_id(run_id)
    if run is not None:
        return run
    if len(run_id) < 4:
        raise NovaError(f"{run_id!r} is too short to name a run: give at least its first 8 characters")
    matches = [
        r.dagster_run for r in instance.get_run_records(limit=5000) if r.dagster_run.run_id.startswith(run_id)
    ]
    if not matches:
        raise NovaError(
            f"no run starting with {run_id!r} in the Dagster instance at {instance.root_directory}; "
            "check DAGSTER_HOME"
        )
    if len(matches) > 1:
        raise NovaError(
            f"{run_id!r} names {len(matches)} runs ({', '.join(r.run_id for r in matches[:3])}...): "
            "give more characters"
        )
    return matches[0]

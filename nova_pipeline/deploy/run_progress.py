"""The progress of any run, read from its event log: per phase, what is done of what, and when it ends.

``nova rebuild`` draws progress from the events of the run it executes itself. A run that the daemon, a
schedule or the admin API launched runs elsewhere; its events reach the instance's event log, and this
module reads them back (``DagsterInstance.get_records_for_run`` from a cursor), for ``GET
/api/v1/admin/runs/{run_id}`` and its Server-Sent Events stream. ``nova monitor`` feeds the same records to
``nova rebuild``'s display.

Phases are the rebuild's (:data:`~nova_pipeline.deploy.run_events.PHASES`); a run of another job shows its
steps' status only. Progress within a phase comes from the observations each asset emits
(:func:`~nova_pipeline.deploy.run_events.progress_reporter`: done, total, unit). The ETA is the running
phase's: ``(total - done) / rate`` at the rate since the phase started; the phases still to come are not
estimated (their cost depends on what changed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import dagster as dg

from nova_pipeline.deploy.run_events import DONE, PART, PHASE, PHASES, TOTAL, UNIT, phase_of

__all__ = ["FINISHED", "PhaseProgress", "RunProgress", "follow"]

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class PhaseProgress:
    """One phase: ``status`` is pending, running, done or failed; ``done``/``total`` in ``unit``."""

    name: str
    status: str = "pending"
    done: int = 0
    total: int | None = None
    unit: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    error: str = ""
    summary: dict = field(default_factory=dict)  # the materialization's plain metadata values
    parts: dict = field(default_factory=dict)  # slices of one phase: part -> (done, total)

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the rate so far, for a running phase with a known total."""
        if self.status != "running" or not self.total or not self.done or self.started_at is None:
            return None
        rate = self.done / max(now - self.started_at, 1e-3)
        return max(0.0, (self.total - self.done) / rate)

    def as_json(self, now: float) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "parts"}
        out["eta_s"] = None if (eta := self.eta_s(now)) is None else round(eta, 1)
        end = self.ended_at or (now if self.started_at else None)
        out["seconds"] = round(end - self.started_at, 2) if self.started_at and end else None
        return out


class RunProgress:
    """The progress of run ``run_id``, updated by :meth:`apply` with its event log records, in order."""

    def __init__(self, run_id: str, job: str = ""):
        self.run_id, self.job = run_id, job
        self.status = "STARTING"
        self.phases = {p: PhaseProgress(p) for p in PHASES.values()}
        self.steps: dict[str, str] = {}  # other steps: key -> status

    def apply(self, record) -> dict | None:
        """Take one ``EventLogRecord``; returns a small JSON-able event when it changed what a watcher sees
        (a phase started, moved, ended, or the run's status), else None."""
        entry = record.event_log_entry
        ev = entry.dagster_event
        if ev is None:
            return None
        kind, at = ev.event_type_value, entry.timestamp
        phase, first, last = phase_of(ev.step_key)
        p = self.phases.get(phase) if phase else None
        if kind in ("RUN_START", "RUN_SUCCESS", "RUN_FAILURE", "RUN_CANCELED"):
            self.status = "STARTED" if kind == "RUN_START" else kind.removeprefix("RUN_")
            return {"type": "run", "status": self.status, "at": at}
        if kind == "STEP_START":
            if p is not None and first and p.status == "pending":
                p.status, p.started_at = "running", at
                return {"type": "phase", "phase": p.name, "status": "running", "at": at}
            if p is None and ev.step_key:
                self.steps[ev.step_key] = "running"
            return None
        if kind == "ASSET_OBSERVATION":
            meta = {k: v.value for k, v in ev.event_specific_data.asset_observation.metadata.items()}
            target = self.phases.get(meta.get(PHASE))
            if target is None:
                return None
            done, total = int(meta.get(DONE, 0)), meta.get(TOTAL)
            if meta.get(PART):  # one slice of several: the phase shows their sum
                target.parts[meta[PART]] = (done, int(total or 0))
                done = sum(d for d, _ in target.parts.values())
                total = sum(t for _, t in target.parts.values())
            target.done, target.total, target.unit = done, int(total) if total else None, meta.get(UNIT, "")
            if target.status == "pending":
                target.status, target.started_at = "running", at
            return {"type": "progress", "phase": target.name, "done": target.done, "total": target.total}
        if kind == "ASSET_MATERIALIZATION" and p is not None:
            mat = ev.event_specific_data.materialization
            p.summary.update(
                {k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float, str, bool))}
            )
            return None
        if kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            failed = kind == "STEP_FAILURE"
            if p is not None and (last or failed):
                p.status, p.ended_at = ("failed" if failed else "done"), at
                if failed:
                    p.error = str(getattr(ev.event_specific_data.error, "message", "") or "").strip()[:500]
                return {"type": "phase", "phase": p.name, "status": p.status, "at": at}
            if p is None and ev.step_key:
                self.steps[ev.step_key] = "failed" if failed else "done"
        return None

    def as_json(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        running = [p for p in self.phases.values() if p.status == "running"]
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": self.status,
            "phases": [p.as_json(now) for p in self.phases.values()],
            "steps": self.steps,
            "current_phase": running[0].name if running else None,
            "eta_s": running[0].as_json(now)["eta_s"] if running else None,
        }


def read(instance: dg.DagsterInstance, run_id: str, progress: RunProgress, cursor=None, limit: int = 1000):
    """Apply the records after ``cursor``; returns ``(events, cursor, has_more)``."""
    conn = instance.get_records_for_run(run_id, cursor=cursor, limit=limit)
    events = [e for e in (progress.apply(r) for r in conn.records) if e is not None]
    return events, conn.cursor, conn.has_more


def follow(
    instance: dg.DagsterInstance, run_id: str, poll_s: float = 0.5, timeout_s: float | None = None
) -> Iterator[dict]:
    """Yield the run's progress events as they reach the event log (from its start), then a last
    ``{"type": "end", ...}`` with the whole progress once the run has finished.

    Raises:
        KeyError: there is no such run.
    """
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise KeyError(run_id)
    progress = RunProgress(run_id, run.job_name)
    cursor, started = None, time.monotonic()
    while True:
        events, cursor, more = read(instance, run_id, progress, cursor)
        yield from events
        if more:
            continue
        run = instance.get_run_by_id(run_id)
        if run.status in FINISHED:
            events, cursor, _ = read(instance, run_id, progress, cursor)  # what came with the end
            yield from events
            progress.status = run.status.value
            yield {"type": "end", **progress.as_json()}
            return
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            yield {"type": "timeout", **progress.as_json()}
            return
        time.sleep(poll_s)

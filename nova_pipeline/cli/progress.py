"""The live display of ``nova rebuild``, built from the run's events (:mod:`nova_pipeline.deploy.run_events`).

Each phase is a step of the ``rebuild`` job. Its bar starts at the step's start event, moves with the
progress observations the asset emits (``nova/phase``, ``nova/done``, ``nova/total``), and ends at the
step's success or failure. Materialization metadata and check evaluations fill the summary. Without a
terminal (CI, a pipe), each phase prints one line when it ends instead of a bar.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nova_pipeline.deploy import run_events

PHASES = run_events.PHASES
_phase_of = run_events.phase_of


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def describe(phase: str, m: dict) -> str:
    """One line of what a phase did, from its materialization metadata."""
    g = m.get
    if phase == "scan":
        skipped = {k: v for k, v in sorted((g("skipped") or {}).items()) if v}
        return (
            f"{g('files', 0):,} files, {_size(g('bytes', 0))}; added {g('status_added', 0)}, changed "
            f"{g('status_changed', 0)}, deleted {g('status_deleted', 0)}; "
            f"re-hashed {_size(g('bytes_rehashed', 0))}"
            + (
                f"; ignored {g('ignored_dirs_count', 0):,} dirs, {g('ignored_files_count', 0):,} files "
                "(see the metadata)"
                if g("ignored_dirs_count") or g("ignored_files_count")
                else ""
            )
            + (
                f"; skipped {sum(skipped.values())} ({', '.join(f'{k} {v}' for k, v in skipped.items())})"
                if skipped
                else ""
            )
        )
    if phase == "patterns":
        if g("unchanged", False):
            return f"{g('patterns', 0)} patterns; unchanged (no file and no option changed)"
        return (
            f"{g('patterns', 0)} patterns; shards analysed {g('shards_analysed', 0)}, "
            f"cached {g('shards_cached', 0)}"
        )
    if phase == "dictionary":
        return (
            f"{g('action', '?')}; held-out ratio {g('heldout_ratio_with_dictionary', 0):.2f}x vs "
            f"{g('heldout_ratio_without_dictionary', 0):.2f}x without"
        )
    if phase == "compress":
        written = "unchanged" if g("unchanged", False) else f"{g('objects_written', 0):,} new"
        return (
            f"{g('objects', 0):,} objects, {written}; store ratio {g('ratio_store', 0):.2f}x; "
            f"{_size(g('raw_bytes', 0))} -> {_size(g('stored_bytes', 0))}"
        )
    if phase == "chunk":
        return (
            f"{g('chunks', 0):,} chunks; {g('files_chunked', 0)} files chunked, {g('files_reused', 0)} reused"
        )
    if phase == "embed":
        return (
            f"{g('vectors', 0):,} vectors; {g('embedded', 0):,} embedded, {g('upserted', 0):,} upserted, "
            f"{g('deleted', 0):,} deleted ({g('embeddings_per_s', 0)} embeddings/s)"
        )
    if phase == "lexical":
        how = f"built in {g('duration_s', 0)} s" if g("built", False) else "unchanged"
        if g("how", "") == "delta":
            how = f"a delta of +{g('delta_added', 0):,} -{g('delta_removed', 0):,} on the base"
        return f"{g('documents', 0):,} documents, {g('vocabulary', 0):,} terms; {how}"
    if phase == "golden copy":
        if not g("promoted", True):
            return str(g("reason", "unchanged"))
        return (
            f"version {g('version', '?')}: wrote {_size(g('bytes_written', 0))}, linked "
            f"{_size(g('bytes_linked', 0))}"
        )
    return ""


def _ours() -> set[str]:
    from nova_pipeline.core import errors

    return {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.NovaError)}


def _root_cause(err) -> str:
    """What to tell a person about a step failure, as ``Type: message``: the first of our own errors in the
    chain (Dagster wraps the step's error; ours say what to do), else the innermost error."""
    if err is None:
        return "failed"
    ours = _ours()
    chosen = err
    while chosen is not None and chosen.cls_name not in ours and getattr(chosen, "cause", None) is not None:
        chosen = chosen.cause
    message = chosen.message.strip()
    if message.startswith(f"{chosen.cls_name}: "):
        message = message[len(chosen.cls_name) + 2 :]
    return f"{chosen.cls_name}: {message.splitlines()[0] if message else ''}".strip()


@dataclass
class PhaseState:
    name: str
    started: float | None = None
    seconds: float | None = None
    metadata: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)  # part -> (done, total), for a phase of several steps
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, passed, severity)
    failed: str = ""


class RebuildDisplay:
    """Receives run-event records and keeps the screen (or the log lines) and the summary up to date.

    Args:
        console: where to draw.
        live: draw bars (a terminal); else print one line per phase.
        quiet: print only errors and the summary.
    """

    def __init__(self, console: Console, live: bool, quiet: bool = False):
        self.console, self.live, self.quiet = console, live and not quiet, quiet
        self.phases = {p: PhaseState(p) for p in PHASES.values()}
        self.tasks: dict[str, int] = {}
        self.failures: list[tuple[str, str]] = []
        self.run_id = ""
        self._lock = threading.Lock()
        self.progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("[dim]{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
            transient=False,
        )

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def _task(self, phase: str) -> int:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=None, unit="", rate="")
        return self.tasks[phase]

    def on_record(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._on_record(record)

    def _on_record(self, record: logging.LogRecord) -> None:
        ev = run_events.dagster_event(record)
        if ev is None:
            if record.levelno >= (logging.ERROR if self.quiet else logging.WARNING):
                self.console.print(f"[yellow]{record.getMessage().split(' - ')[-1]}", highlight=False)
            return
        kind = ev.event_type_value
        self.run_id = self.run_id or (getattr(record, "dagster_meta", {}) or {}).get("run_id", "")
        phase, first, last = _phase_of(ev.step_key)
        if kind == "STEP_START" and phase and first:
            self.phases[phase].started = time.monotonic()
            self._task(phase)
        elif kind == "ASSET_OBSERVATION":
            meta = {k: v.value for k, v in ev.event_specific_data.asset_observation.metadata.items()}
            name = meta.get(run_events.PHASE)
            if name in self.phases and self.live:
                total = meta.get(run_events.TOTAL) or None
                state = self.phases[name]
                elapsed = time.monotonic() - (state.started or time.monotonic())
                done = meta.get(run_events.DONE, 0)
                if meta.get(run_events.PART):  # one slice of several: the bar shows their sum
                    state.parts[meta[run_events.PART]] = (done, total or 0)
                    done = sum(d for d, _ in state.parts.values())
                    total = sum(t for _, t in state.parts.values()) or None
                rate = f"{done / elapsed:,.1f}/s" if elapsed > 0.2 and done else ""
                if meta.get(run_events.DONE_BYTES):
                    rate += f" {_size(meta[run_events.DONE_BYTES] / max(elapsed, 1e-3))}/s"
                self.progress.update(
                    self._task(name),
                    total=total,
                    completed=done,
                    unit=meta.get(run_events.UNIT, ""),
                    rate=rate,
                )
        elif kind == "ASSET_MATERIALIZATION" and phase:
            mat = ev.event_specific_data.materialization
            self.phases[phase].metadata.update({k: v.value for k, v in mat.metadata.items()})
        elif kind == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            owner = PHASES.get(data.asset_key.to_user_string())
            if owner:
                self.phases[owner].checks.append((data.check_name, data.passed, data.severity.value))
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and phase and (last or kind == "STEP_FAILURE"):
            state = self.phases[phase]
            # a phase of several steps lasts from its first step's start to its last step's end
            duration = getattr(ev.event_specific_data, "duration_ms", None) if first else None
            state.seconds = (
                duration / 1000 if duration is not None else time.monotonic() - (state.started or 0)
            )
            if kind == "STEP_FAILURE":
                state.failed = _root_cause(ev.event_specific_data.error)
                self.failures.append((ev.step_key, state.failed))
            if self.live:
                task = self._task(phase)
                t = self.progress.tasks[self.progress.task_ids.index(task)]
                self.progress.update(
                    task,
                    total=t.total or 1,
                    completed=t.total or 1,
                    rate="[red]failed" if state.failed else "",
                )
            elif not self.quiet:
                line = f"{phase:<12} {state.seconds:6.2f} s  " + (
                    f"FAILED: {state.failed}" if state.failed else describe(phase, state.metadata)
                )
                self.console.print(line, highlight=False, soft_wrap=True)
        elif kind == "STEP_FAILURE" and ev.step_key:  # a step of no phase failed
            self.failures.append((ev.step_key, _root_cause(ev.event_specific_data.error)))

    def failed_checks(self, blocking_only: bool = True) -> list[str]:
        """Checks that failed; with ``blocking_only``, those of ERROR severity (what blocking checks use)."""
        return [
            f"{p.name}: {name}"
            for p in self.phases.values()
            for name, ok, sev in p.checks
            if not ok and (sev == "ERROR" or not blocking_only)
        ]

    def summary(self) -> Table:
        table = Table(title=f"rebuild {self.run_id[:8]}")
        for col, justify in (
            ("phase", "left"),
            ("seconds", "right"),
            ("what it did", "left"),
            ("checks", "left"),
        ):
            table.add_column(col, justify=justify)
        for p in self.phases.values():
            if p.seconds is None and not p.failed:
                table.add_row(p.name, "-", "[dim]did not run", "")
                continue
            checks = " ".join(("[green]✓" if ok else "[red]✗") + f" {name}[/]" for name, ok, _ in p.checks)
            what = f"[red]FAILED: {p.failed}" if p.failed else describe(p.name, p.metadata)
            table.add_row(p.name, f"{p.seconds:.2f}", what, checks)
        return table

    def as_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "phases": [
                {
                    "phase": p.name,
                    "seconds": p.seconds,
                    "failed": p.failed or None,
                    "summary": describe(p.name, p.metadata) if p.metadata else None,
                    "checks": [{"name": n, "passed": ok, "severity": s} for n, ok, s in p.checks],
                    "metadata": {
                        k: v for k, v in p.metadata.items() if isinstance(v, (int, float, str, bool))
                    },
                }
                for p in self.phases.values()
            ],
        }

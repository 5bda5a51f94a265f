"""Health checks with levels: each a plain function returning a :class:`Check`, never raising.

Three levels, as monitoring plugins use them (Nagios, Icinga: OK, WARNING, CRITICAL): ``ok``; ``warning``,
something to look at that does not stop searches or rebuilds (no backup yet, failed over, a run found dead
and failed); ``critical``, something that does (NOVA_HOME not writable, the primary down and no failover,
the last rebuild failed, a backup schedule that stopped producing backups). ``n/a`` for a check that does not
apply (PostgreSQL on an SQLite instance). ``nova health`` exits 1 on any critical (``--strict``: on any
warning too) and ``/api/v1/admin/health`` answers 503 then.

What only the Dagster side knows (the instance's Postgres URL, the last ``rebuild`` run, the backup
schedule, runs found dead, pool slots) is passed in as :class:`RunFacts`.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nova_pipeline.core.layout import Layout

__all__ = [
    "BACKUP_MAX_AGE_HOURS",
    "CRITICAL",
    "LEVELS",
    "MIN_FREE_DISK_BYTES",
    "NA",
    "OK",
    "WARNING",
    "Check",
    "RunFacts",
    "backup_age",
    "disk_headroom",
    "golden_quick",
    "healthy",
    "home_writable",
    "last_run",
    "memory_headroom",
    "model_loads",
    "postgres",
    "primary_store",
    "run_checks",
    "runs_and_slots",
]

OK, WARNING, CRITICAL, NA = "ok", "warning", "critical", "n/a"
LEVELS = (OK, WARNING, CRITICAL, NA)
MIN_FREE_DISK_BYTES = 2**30  # 1 GiB: a promotion, a backup and the store's next batch need room
LOW_DISK_BYTES = 5 * 2**30  # under this: a warning
BACKUP_MAX_AGE_HOURS = 26.0  # the daily_backup schedule, plus two hours of slack


@dataclass
class Check:
    """One health check: its name, level (:data:`LEVELS`) and what it found."""

    name: str
    level: str
    detail: str

    @property
    def ok(self) -> bool | None:
        """True at ``ok``, False at ``critical``, None otherwise (a warning, or not applicable)."""
        return True if self.level == OK else False if self.level == CRITICAL else None

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class RunFacts:
    """What the Dagster instance knows, for the checks: the last ``rebuild`` run (status, start time), the
    ``daily_backup`` schedule (running, interval in seconds), runs found dead (and now failed:
    ``[(run id, job, reason)]``) and slots claimed in the writer pool (``{run id: slots}``, with the ids of
    runs still going in ``live_runs``)."""

    last_rebuild: tuple[str | None, float | None] = (None, None)
    backup_schedule: tuple[bool, float] | None = None
    dead_runs: list[tuple[str, str, str]] = field(default_factory=list)
    claimed_slots: dict[str, int] = field(default_factory=dict)
    live_runs: set[str] = field(default_factory=set)
    instance: str = ""  # where the instance is, or why it could not be read (empty: not asked)


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check, named
        return Check(name, CRITICAL, f"{type(exc).__name__}: {exc}")


def _level(ok: bool) -> str:
    return OK if ok else CRITICAL


def home_writable(home) -> Check:
    """NOVA_HOME and the directories under it that exist are writable (NOVA_HOME may not exist yet)."""
    layout = Layout.of(home)
    dirs = [
        layout.home,
        layout.tables,
        layout.store,
        layout.dictionaries,
        layout.vectors,
        layout.golden,
        layout.runtime,
        layout.backups,
        layout.logs,
        layout.failover,
    ]
    bad = [str(d) for d in dirs if d.exists() and not os.access(d, os.W_OK | os.X_OK)]
    if not layout.home.exists():
        parent = layout.home.parent
        ok = os.access(parent, os.W_OK | os.X_OK)
        return Check(
            "NOVA_HOME writable",
            _level(ok),
            f"{layout.home} does not exist yet; {parent} is " + ("writable" if ok else "not writable"),
        )
    return Check(
        "NOVA_HOME writable", _level(not bad), "not writable: " + ", ".join(bad) if bad else str(layout.home)
    )


def disk_headroom(home, min_free: int = MIN_FREE_DISK_BYTES) -> Check:
    """At least ``min_free`` bytes free on NOVA_HOME's file system."""
    path = Layout.of(home).home
    while not path.exists():
        path = path.parent
    usage = shutil.disk_usage(path)
    level = CRITICAL if usage.free < min_free else WARNING if usage.free < LOW_DISK_BYTES else OK
    return Check(
        "disk headroom",
        level,
        f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
        + (
            ""
            if level == OK
            else f"; a rebuild, a promotion and a backup want at least {LOW_DISK_BYTES / 2**30:.0f} GiB"
        ),
    )


def memory_headroom(home, max_memory_mb: int) -> Check:
    """A backup store of CURRENT fits in memory, or at least on disk (the failover estimate)."""
    from nova_pipeline.core.protect import golden
    from nova_pipeline.core.serving.estimate import estimate_for_version

    cur = golden.current_version(home)
    if cur is None:
        return Check("memory headroom", NA, "no golden copy yet: nothing to estimate")
    est = estimate_for_version(
        cur, max_memory_mb=max_memory_mb, disk_copy=Layout.of(home).runtime_vectors.is_dir()
    )
    return Check("memory headroom", WARNING if est.choice == "refuse" else OK, est.message)


def model_files(home, model_dir=None) -> Check:
    """Every file of the embedding model matches its pinned blake3 manifest (no load: about 0.05 s)."""
    from nova_pipeline.core.index.embedding import bundled_model_dir
    from nova_pipeline.core.index.model_files import ModelVerificationError, verify

    try:
        check = verify(model_dir or bundled_model_dir(), home)
    except ModelVerificationError as exc:
        return Check("model files", CRITICAL, str(exc))
    return Check("model files", OK, f"{check.files} files match the pinned manifest {check.manifest.name}")


def model_loads(timeout: float = 180) -> Check:
    """The embedding model loads offline and embeds a text, in a subprocess (so a failure is a result)."""
    code = (
        "from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder as E; "
        "import time; t = time.perf_counter(); m = E(); v = m.embed(['ok']); "
        "print(m.fingerprint, v.shape[1], round(time.perf_counter() - t, 1))"
    )
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
    except subprocess.TimeoutExpired:
        return Check("model loads offline", CRITICAL, f"no answer in {timeout:.0f} s")
    if proc.returncode != 0:
        return Check("model loads offline", CRITICAL, (proc.stderr.strip().splitlines() or ["?"])[-1][-300:])
    fp, dim, secs = proc.stdout.split()[-3:]
    return Check(
        "model loads offline",
        OK,
        f"{fp}, {dim} dimensions, loaded in {secs} s "
        f"({time.perf_counter() - started:.1f} s with the interpreter)",
    )


def primary_store(home, chroma_url: str | None, fingerprint: str, timeout: float = 10) -> Check:
    """The primary vector store answers a real probe (heartbeat, count, one query, in a subprocess); the
    failover pointer and breaker are reported beside it."""
    from nova_pipeline.core.serving.pointer import read_state
    from nova_pipeline.core.serving.probe import probe

    state = read_state(home)
    where = chroma_url or str(Layout.of(home).vectors)
    p = probe(Path(home), chroma_url, fingerprint, timeout)
    pointer = (
        f"; FAILED OVER to the backup since {state.since}"
        if state.failed_over
        else f"; active: primary, breaker {state.breaker}"
    )
    if p.ok:
        return Check(
            "primary vector store",
            WARNING if state.failed_over else OK,
            (
                f"{where}: {p.count:,} vectors, answered in {p.seconds:.2f} s"
                if p.count is not None
                else f"{where}: in use by a writer (a rebuild holds its lock), not opened"
            )
            + pointer,
        )
    # failed over already: searches are answered (from the backup); else they depend on the per-query fallback
    return Check(
        "primary vector store", WARNING if state.failed_over else CRITICAL, f"{where}: {p.error}{pointer}"
    )


def postgres(url: str | None, timeout: int = 5) -> Check:
    """The instance's PostgreSQL answers ``SELECT 1`` (not applicable on SQLite)."""
    if not url:
        return Check("PostgreSQL", NA, "the Dagster instance does not use PostgreSQL")
    import psycopg2

    safe = url.split("@")[-1]
    try:
        conn = psycopg2.connect(url, connect_timeout=timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            conn.close()
    except psycopg2.Error as exc:
        return Check("PostgreSQL", CRITICAL, f"{safe}: {str(exc).strip().splitlines()[0]}")
    return Check("PostgreSQL", OK, f"{safe} answers")


def golden_quick(home) -> Check:
    """CURRENT exists and every file its manifest names is there with its size (no hashing: quick level)."""
    from nova_pipeline.core.protect import golden

    cur = golden.current_version(home)
    if cur is None:
        return Check(
            "golden copy", WARNING, "no golden copy yet (nothing to fail over to): run the rebuild job"
        )
    files = golden.read_manifest(cur.path)["files"]
    bad = [
        rel
        for rel, f in files.items()
        if not (cur.path / rel).is_file() or (cur.path / rel).stat().st_size != f["size"]
    ]
    return Check(
        "golden copy",
        _level(not bad),
        f"CURRENT {cur.name}: {cur.count:,} vectors, {len(files)} files"
        + (f"; missing or resized: {', '.join(bad[:3])}" if bad else " present (quick check)"),
    )


def backup_age(
    home, schedule: tuple[bool, float] | None = None, max_age_hours: float = BACKUP_MAX_AGE_HOURS
) -> Check:
    """The newest backup's age. No backup yet is a warning, and so is one older than ``max_age_hours``; it is
    critical only when a backup schedule runs (``schedule``: ``(running, interval in seconds)``) and the
    newest backup is older than twice its interval: the schedule stopped producing backups."""
    from nova_pipeline.core.protect import backup

    running, interval = schedule if schedule is not None else (False, 0.0)
    b = backup.newest_backup(home)
    if b is None:
        how = "the daily_backup schedule is on" if running else "nova backup create, or turn on daily_backup"
        return Check("newest backup", WARNING, f"no backup yet ({how})")
    age_s = time.time() - b.path.stat().st_mtime
    detail = f"{b.id}, {age_s / 3600:.1f} h old"
    if running and age_s > 2 * interval:
        return Check(
            "newest backup",
            CRITICAL,
            f"{detail}: over twice the schedule's interval "
            f"({interval / 3600:g} h): is the daemon running, do backups fail?",
        )
    if age_s > max_age_hours * 3600:
        return Check("newest backup", WARNING, f"{detail} (over {max_age_hours:g} h)")
    return Check("newest backup", OK, detail)


def last_run(status: str | None, at: float | None, job: str = "rebuild") -> Check:
    """The last run of ``job``: a failure is critical (the index is behind the tree), none yet a warning."""
    if status is None:
        return Check(f"last {job} run", WARNING, f"no {job} run in the Dagster instance (DAGSTER_HOME)")
    when = dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds") if at else "?"
    if status in ("STARTED", "STARTING", "QUEUED", "NOT_STARTED"):
        return Check(f"last {job} run", OK, f"{status} since {when}")
    return Check(f"last {job} run", OK if status == "SUCCESS" else CRITICAL, f"{status} at {when}")


def runs_and_slots(facts: RunFacts) -> Check:
    """Runs found dead (their process gone; now failed, resumable) and writer-pool slots still claimed by runs
    that are not going: warnings, named."""
    problems = [
        f"run {rid[:8]} ({job}) {reason}; marked failed: nova resume {rid[:8]}"
        for rid, job, reason in facts.dead_runs
    ]
    stuck = {rid: n for rid, n in facts.claimed_slots.items() if rid not in facts.live_runs}
    problems += [f"run {rid[:8]} still holds {n} slot(s) of vector_index_writer" for rid, n in stuck.items()]
    held = sum(facts.claimed_slots.values())
    if problems:
        return Check("runs and pool slots", WARNING, "; ".join(problems))
    return Check("runs and pool slots", OK, f"no dead run; {held} writer-pool slot(s) held by running runs")


def run_checks(
    home,
    chroma_url: str | None,
    fingerprint: str,
    max_memory_mb: int,
    pg_url: str | None,
    facts: RunFacts | None = None,
    load_model: bool = True,
) -> list[Check]:
    """Every check, in the order a person reads them. ``load_model`` False skips loading the model (a
    process that holds it loaded already knows)."""
    facts = facts or RunFacts()
    checks = [
        _guard("NOVA_HOME writable", lambda: home_writable(home)),
        _guard("disk headroom", lambda: disk_headroom(home)),
        _guard("model files", lambda: model_files(home)),
        _guard("memory headroom", lambda: memory_headroom(home, max_memory_mb)),
        _guard("model loads offline", model_loads)
        if load_model
        else Check("model loads offline", OK, "loaded in this process"),
        _guard("primary vector store", lambda: primary_store(home, chroma_url, fingerprint)),
        _guard("PostgreSQL", lambda: postgres(pg_url)),
        _guard("golden copy", lambda: golden_quick(home)),
        _guard("newest backup", lambda: backup_age(home, facts.backup_schedule)),
        _guard("last rebuild run", lambda: last_run(*facts.last_rebuild)),
        _guard("runs and pool slots", lambda: runs_and_slots(facts)),
    ]
    if facts.instance:
        checks.append(Check("Dagster instance", CRITICAL, facts.instance))
    return checks


def healthy(checks: list[Check], strict: bool = False) -> bool:
    """No check is critical (with ``strict``: none is a warning either)."""
    bad = (CRITICAL, WARNING) if strict else (CRITICAL,)
    return all(c.level not in bad for c in checks)

"""Health checks: each a plain function returning a :class:`Check` (name, ok, detail), never raising.

``nova health`` and the service's ``/api/v1/admin/health`` run :func:`run_checks`; what only the Dagster side
knows (the Postgres URL of the instance, the last ``rebuild`` run) is passed in.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nova_pipeline.core.layout import Layout

__all__ = [
    "BACKUP_MAX_AGE_HOURS",
    "MIN_FREE_DISK_BYTES",
    "Check",
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
]

MIN_FREE_DISK_BYTES = 2**30  # 1 GiB: a promotion, a backup and the store's next batch need room
BACKUP_MAX_AGE_HOURS = 26.0  # the daily_backup schedule, plus two hours of slack


@dataclass
class Check:
    """One health check. ``ok`` None means "not applicable" (it neither passes nor fails the whole)."""

    name: str
    ok: bool | None
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check, named
        return Check(name, False, f"{type(exc).__name__}: {exc}")


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
            ok,
            f"{layout.home} does not exist yet; {parent} is " + ("writable" if ok else "not writable"),
        )
    return Check(
        "NOVA_HOME writable", not bad, "not writable: " + ", ".join(bad) if bad else str(layout.home)
    )


def disk_headroom(home, min_free: int = MIN_FREE_DISK_BYTES) -> Check:
    """At least ``min_free`` bytes free on NOVA_HOME's file system."""
    path = Layout.of(home).home
    while not path.exists():
        path = path.parent
    usage = shutil.disk_usage(path)
    ok = usage.free >= min_free
    return Check(
        "disk headroom",
        ok,
        f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
        + ("" if ok else f"; need {min_free / 2**30:.1f} GiB"),
    )


def memory_headroom(home, max_memory_mb: int) -> Check:
    """A backup store of CURRENT fits in memory, or at least on disk (the failover estimate)."""
    from nova_pipeline.core.protect import golden
    from nova_pipeline.core.serving.estimate import estimate_for_version

    cur = golden.current_version(home)
    if cur is None:
        return Check("memory headroom", None, "no golden copy yet: nothing to estimate")
    est = estimate_for_version(
        cur, max_memory_mb=max_memory_mb, disk_copy=Layout.of(home).runtime_vectors.is_dir()
    )
    return Check("memory headroom", est.choice != "refuse", est.message)


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
        return Check("model loads offline", False, f"no answer in {timeout:.0f} s")
    if proc.returncode != 0:
        return Check("model loads offline", False, (proc.stderr.strip().splitlines() or ["?"])[-1][-300:])
    fp, dim, secs = proc.stdout.split()[-3:]
    return Check(
        "model loads offline",
        True,
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
            True,
            (
                f"{where}: {p.count:,} vectors, answered in {p.seconds:.2f} s"
                if p.count is not None
                else f"{where}: in use by a writer (a rebuild holds its lock), not opened"
            )
            + pointer,
        )
    return Check("primary vector store", False, f"{where}: {p.error}{pointer}")


def postgres(url: str | None, timeout: int = 5) -> Check:
    """The instance's PostgreSQL answers ``SELECT 1`` (not applicable on SQLite)."""
    if not url:
        return Check("PostgreSQL", None, "the Dagster instance does not use PostgreSQL")
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
        return Check("PostgreSQL", False, f"{safe}: {str(exc).strip().splitlines()[0]}")
    return Check("PostgreSQL", True, f"{safe} answers")


def golden_quick(home) -> Check:
    """CURRENT exists and every file its manifest names is there with its size (no hashing: quick level)."""
    from nova_pipeline.core.protect import golden

    cur = golden.current_version(home)
    if cur is None:
        return Check("golden copy", False, "no golden copy: run the rebuild job")
    files = golden.read_manifest(cur.path)["files"]
    bad = [
        rel
        for rel, f in files.items()
        if not (cur.path / rel).is_file() or (cur.path / rel).stat().st_size != f["size"]
    ]
    return Check(
        "golden copy",
        not bad,
        f"CURRENT {cur.name}: {cur.count:,} vectors, {len(files)} files"
        + (f"; missing or resized: {', '.join(bad[:3])}" if bad else " present (quick check)"),
    )


def backup_age(home, max_age_hours: float = BACKUP_MAX_AGE_HOURS) -> Check:
    """The newest backup is younger than ``max_age_hours`` (the daily schedule, with slack)."""
    from nova_pipeline.core.protect import backup

    b = backup.newest_backup(home)
    if b is None:
        return Check(
            "newest backup", False, "no backup: nova backup create, or turn on the daily_backup schedule"
        )
    age = (time.time() - b.path.stat().st_mtime) / 3600
    return Check(
        "newest backup", age <= max_age_hours, f"{b.id}, {age:.1f} h old (at most {max_age_hours:g} h)"
    )


def last_run(status: str | None, at: float | None, job: str = "rebuild") -> Check:
    """The last run of ``job`` succeeded (``status`` and start time come from the Dagster instance)."""
    if status is None:
        return Check(f"last {job} run", False, f"no {job} run in the Dagster instance (DAGSTER_HOME)")
    when = dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds") if at else "?"
    return Check(f"last {job} run", status == "SUCCESS", f"{status} at {when}")


def run_checks(
    home,
    chroma_url: str | None,
    fingerprint: str,
    max_memory_mb: int,
    pg_url: str | None,
    last_rebuild: tuple[str | None, float | None],
    load_model: bool = True,
) -> list[Check]:
    """Every check, in the order a person reads them. ``load_model`` False skips loading the model (a
    process that holds it loaded already knows)."""
    checks = [
        _guard("NOVA_HOME writable", lambda: home_writable(home)),
        _guard("disk headroom", lambda: disk_headroom(home)),
        _guard("memory headroom", lambda: memory_headroom(home, max_memory_mb)),
        _guard("model loads offline", model_loads)
        if load_model
        else Check("model loads offline", True, "loaded in this process"),
        _guard("primary vector store", lambda: primary_store(home, chroma_url, fingerprint)),
        _guard("PostgreSQL", lambda: postgres(pg_url)),
        _guard("golden copy", lambda: golden_quick(home)),
        _guard("newest backup", lambda: backup_age(home)),
        _guard("last rebuild run", lambda: last_run(*last_rebuild)),
    ]
    return checks


def healthy(checks: list[Check]) -> bool:
    """No check failed (not-applicable ones do not count)."""
    return all(c.ok is not False for c in checks)

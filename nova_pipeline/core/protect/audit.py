"""The audit log of destructive and admin operations: one JSON object per line in ``NOVA_HOME/audit.log``.

Each record is appended and fsynced before the caller goes on. The file is created readable and writable
by its owner only (0600: it names tokens and clients), and an existing file with wider permissions is
narrowed on the next write. Writers in several processes append whole lines (``O_APPEND``, one ``write``
per record), so their records never interleave.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import stat
from pathlib import Path

from nova_pipeline.core.layout import Layout

__all__ = ["actor", "read", "record"]

MODE = 0o600


def actor(run_tag: str | None = None) -> str:
    """Who acts: a run tag (e.g. the Dagster user) when given, else ``$USER``, else the login name."""
    if run_tag:
        return run_tag
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record(home: Path, action: str, outcome: str, who: str, **details) -> dict:
    """Append one audit record (fsynced) and return it.

    Fields: ``at`` (UTC ISO 8601), ``who``, ``action``, ``outcome`` and ``details`` (for ``nova serve``:
    ``client``, the address the request came from, and ``token``, the name of the token it presented).

    Raises:
        OSError: the log cannot be written.
    """
    entry = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "who": who,
        "action": action,
        "outcome": outcome,
        "details": details,
    }
    path = Layout.of(home).audit_log
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, MODE)  # a log created before it was kept private
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def read(home: Path) -> list[dict]:
    """Every audit record, oldest first."""
    path = Layout.of(home).audit_log
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

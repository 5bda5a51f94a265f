"""The audit log of destructive and admin operations: one JSON object per line in ``NOVA_HOME/audit.log``."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from pathlib import Path

from nova_pipeline.core.layout import Layout

__all__ = ["actor", "read", "record"]


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

    Fields: ``at`` (UTC ISO 8601), ``who``, ``action``, ``outcome`` and ``details``.
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
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return entry


def read(home: Path) -> list[dict]:
    """Every audit record, oldest first."""
    path = Layout.of(home).audit_log
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

"""The failover pointer: ``NOVA_HOME/failover/state.json`` says which store answers searches and takes
writes (``primary`` or ``backup``), with the breaker's state, since when and why.

Every reader (``nova_pipeline.search``, ``nova search``, ``nova serve``, the pipeline) reads it; every write
is atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import FailoverError
from nova_pipeline.core.layout import Layout

__all__ = [
    "BACKUP",
    "PRIMARY",
    "FailoverState",
    "now_iso",
    "read_state",
    "set_breaker",
    "state_path",
    "write_state",
]

PRIMARY, BACKUP = "primary", "backup"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class FailoverState:
    """``NOVA_HOME/failover/state.json``.

    Attributes:
        active: ``primary`` or ``backup``: the store that answers searches and takes writes.
        breaker: the health sensor's breaker: ``closed``, ``open`` or ``half-open``.
        since: when ``active`` last changed (UTC ISO 8601).
        reason: why it changed.
        backup_version, backup_created_at: the golden version the backup store holds, and when it was made
            (searches answered by the backup are "stale as of" that time).
        backup_kind: ``memory`` or ``disk``, as the resource estimate chose at failover.
        updated_at: the last write of this record.
    """

    active: str = PRIMARY
    breaker: str = "closed"
    since: str = ""
    reason: str = "initial state"
    backup_version: str | None = None
    backup_created_at: str | None = None
    backup_kind: str | None = None
    updated_at: str = ""

    @property
    def failed_over(self) -> bool:
        return self.active == BACKUP


def state_path(home) -> Path:
    return Layout.of(home).failover / "state.json"


def read_state(home) -> FailoverState:
    """The pointer; ``primary`` with a closed breaker when it was never written."""
    try:
        raw = json.loads(state_path(home).read_text())
    except FileNotFoundError:
        return FailoverState()
    except ValueError as exc:
        raise FailoverError(f"{state_path(home)} is not valid JSON ({exc}); fix or delete it") from exc
    known = {f for f in FailoverState.__dataclass_fields__}
    return FailoverState(**{k: v for k, v in raw.items() if k in known})


def write_state(home, state: FailoverState) -> FailoverState:
    """Write the pointer atomically (temp file, fsync, rename) and return it."""
    state.updated_at = now_iso()
    atomic_write_bytes(state_path(home), json.dumps(asdict(state), indent=1).encode())
    return state


def set_breaker(home, breaker: str) -> FailoverState:
    """Record the breaker's state in the pointer (only when it changed)."""
    state = read_state(home)
    if state.breaker != breaker:
        state.breaker = breaker
        write_state(home, state)
    return state

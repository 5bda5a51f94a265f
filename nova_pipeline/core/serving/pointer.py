"""The failover pointer: ``NOVA_HOME/failover/state.json`` says which store answers searches and takes
writes (``primary`` or ``backup``), with the health sensor's breaker state, since when and why.

Every reader (``nova_pipeline.search``, ``nova search``, ``nova serve``, the pipeline, the sensors) reads it;
every change is a read-modify-write under the pointer lock (:func:`update_state`, lock order 3 of
:mod:`nova_pipeline.core.locks`), so two writers (the health sensor recording its breaker, a failover
flipping the store) never overwrite each other's change. Each write is atomic (temp file, fsync, rename)
and is copied, after it, to ``state.json.good``: the last known good pointer. A damaged ``state.json``
(a half-written disk, a hand edit) is read as that copy, logged, and repaired by the next change, so
searches and automatic failover keep going.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.locks import pointer_lock

__all__ = [
    "BACKUP",
    "PRIMARY",
    "FailoverState",
    "now_iso",
    "read_state",
    "set_breaker",
    "state_path",
    "update_state",
    "write_state",
]

log = logging.getLogger(__name__)

PRIMARY, BACKUP = "primary", "backup"
GOOD_SUFFIX = ".good"


def now_iso() -> str:
    """Now, UTC, ISO 8601 to the second."""
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
        recovered_from: not stored; set when ``state.json`` was unreadable and this is the last good copy
            (or the default, when there was none), saying why.
    """

    active: str = PRIMARY
    breaker: str = "closed"
    since: str = ""
    reason: str = "initial state"
    backup_version: str | None = None
    backup_created_at: str | None = None
    backup_kind: str | None = None
    updated_at: str = ""
    recovered_from: str = field(default="", compare=False)

    @property
    def failed_over(self) -> bool:
        return self.active == BACKUP


class _NotAState(Exception):
    """The pointer file parses but is not a failover state."""


def state_path(home) -> Path:
    """``NOVA_HOME/failover/state.json``."""
    return Layout.of(home).failover / "state.json"


def _parse(path: Path) -> FailoverState:
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict) or raw.get("active", PRIMARY) not in (PRIMARY, BACKUP):
        raise _NotAState("not a failover state")
    known = {f for f in FailoverState.__dataclass_fields__} - {"recovered_from"}
    return FailoverState(**{k: v for k, v in raw.items() if k in known})


def read_state(home) -> FailoverState:
    """The pointer: ``primary`` with a closed breaker when it was never written. Never raises for a damaged
    file: it reads the last good copy instead (``recovered_from`` says so, and it is logged)."""
    path = state_path(home)
    try:
        return _parse(path)
    except FileNotFoundError:
        return FailoverState()
    except (OSError, ValueError, TypeError, _NotAState) as exc:
        problem = f"{path.name} is unreadable ({type(exc).__name__}: {exc})"
    good = path.with_name(path.name + GOOD_SUFFIX)
    try:
        state = _parse(good)
        state.recovered_from = f"{problem}: using the last good copy {good.name} of {state.updated_at}"
    except (OSError, ValueError, TypeError, _NotAState):
        state = FailoverState(reason="no readable pointer")
        state.recovered_from = f"{problem}, and there is no readable {good.name}: assuming the primary"
    log.error("failover pointer: %s", state.recovered_from)
    return state


def write_state(home, state: FailoverState) -> FailoverState:
    """Write the pointer atomically, then its last-good copy, and return it. Callers that read the pointer
    first use :func:`update_state`, which holds the pointer lock across both."""
    state.updated_at = now_iso()
    body = json.dumps({k: v for k, v in asdict(state).items() if k != "recovered_from"}, indent=1).encode()
    path = state_path(home)
    atomic_write_bytes(path, body)
    atomic_write_bytes(path.with_name(path.name + GOOD_SUFFIX), body)
    state.recovered_from = ""
    return state


def update_state(home, change: Callable[[FailoverState], bool | None]) -> FailoverState:
    """Read the pointer, apply ``change`` (which edits the state in place and returns False when there is
    nothing to write), write it: all under the pointer lock. Returns the state as written (or read).

    Raises:
        LockTimeoutError: another process held the pointer lock for 30 s.
    """
    with pointer_lock(home):
        state = read_state(home)
        if change(state) is False and not state.recovered_from:
            return state
        return write_state(home, state)


def set_breaker(home, breaker: str) -> FailoverState:
    """Record the health sensor's breaker state in the pointer (written only when it changed)."""

    def change(state: FailoverState) -> bool:
        if state.breaker == breaker:
            return False
        state.breaker = breaker
        return True

    return update_state(home, change)

"""The circuit breaker of the primary vector store's health sensor: pybreaker's breaker, its state kept in a
plain dict (a Dagster sensor's cursor), and one sensor tick of probes through it.

Kept apart from :mod:`.failover` because pybreaker imports redis (and redis OpenTelemetry) when it is
imported: about 0.1 s that every run process paid for nothing, since only the sensor uses it. Defaults (in
:class:`.failover.FailoverSettings`): 3 consecutive failed probes open it, half-open after 30 s, one good
probe closes it.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import pybreaker

from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.probe import Probe

__all__ = ["DictStorage", "Tick", "evaluate", "make_breaker"]


class DictStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's state in a plain, JSON-able dict: ``state``, ``counter``, ``success_counter``,
    ``opened_at`` (ISO 8601). A Dagster sensor keeps :attr:`data` as its cursor, so the breaker survives
    between ticks and daemon restarts (pybreaker's own storages are process memory or Redis)."""

    def __init__(self, data: dict | None = None):
        super().__init__("primary_vector_store")
        self.data = {
            "state": pybreaker.STATE_CLOSED,
            "counter": 0,
            "success_counter": 0,
            "opened_at": None,
            **(data or {}),
        }

    @property
    def state(self) -> str:
        return self.data["state"]

    @state.setter
    def state(self, state: str) -> None:
        self.data["state"] = state

    def increment_counter(self) -> None:
        self.data["counter"] += 1

    def reset_counter(self) -> None:
        self.data["counter"] = 0

    def increment_success_counter(self) -> None:
        self.data["success_counter"] += 1

    def reset_success_counter(self) -> None:
        self.data["success_counter"] = 0

    @property
    def counter(self) -> int:
        return self.data["counter"]

    @property
    def success_counter(self) -> int:
        return self.data["success_counter"]

    @property
    def opened_at(self) -> dt.datetime | None:
        raw = self.data.get("opened_at")
        return dt.datetime.fromisoformat(raw) if raw else None

    @opened_at.setter
    def opened_at(self, value: dt.datetime) -> None:
        self.data["opened_at"] = value.isoformat()


def make_breaker(
    data: dict | None, settings: FailoverSettings
) -> tuple[pybreaker.CircuitBreaker, DictStorage]:
    """A pybreaker breaker over ``data`` (a cursor's dict): ``failure_threshold`` failures open it, and it
    half-opens ``half_open_after_s`` seconds later."""
    storage = DictStorage(data)
    breaker = pybreaker.CircuitBreaker(
        fail_max=settings.failure_threshold,
        reset_timeout=settings.half_open_after_s,
        state_storage=storage,
        name="primary_vector_store",
    )
    return breaker, storage


class _ProbeFailed(Exception):
    """The probe found the primary unhealthy (the breaker counts it)."""


@dataclass
class Tick:
    """What one evaluation of the breaker did: probes run (``ok`` each), states before and after."""

    before: str
    after: str
    probes: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def opened(self) -> bool:
        """The breaker opened in this tick: from closed after the threshold, or again after a failed trial."""
        return self.after == pybreaker.STATE_OPEN and bool(self.probes) and not self.probes[-1]

    @property
    def closed(self) -> bool:
        return self.after == pybreaker.STATE_CLOSED and self.before != pybreaker.STATE_CLOSED


def evaluate(breaker: pybreaker.CircuitBreaker, probe, confirm_pause_s: float = 0.5) -> Tick:
    """One sensor tick: probe the primary through the breaker.

    Open, before its half-open timeout, the breaker refuses the call and no probe runs (``skipped``); after
    it, pybreaker half-opens and lets one trial probe decide (closed on success, open again on failure). A
    probe that fails while closed is confirmed by further probes ``confirm_pause_s`` apart, up to the
    threshold, in the same tick: a dead primary opens the breaker in one tick instead of three.

    Args:
        probe: a callable returning :class:`Probe`.
    """
    before = breaker.current_state
    tick = Tick(before=before, after=before)
    while True:
        result: Probe | None = None

        def call():
            nonlocal result
            result = probe()
            if not result.ok:
                raise _ProbeFailed

        try:
            breaker.call(call)
            tick.probes.append(True)
        except (_ProbeFailed, pybreaker.CircuitBreakerError):
            if result is None:  # refused without probing: open, the half-open timeout not elapsed
                tick.skipped = not tick.probes
                break
            tick.probes.append(False)
            tick.errors.append(result.error or "the probe failed without saying why")
        if (
            breaker.current_state != pybreaker.STATE_CLOSED
            or tick.probes[-1]
            or len(tick.probes) >= breaker.fail_max
        ):
            break
        time.sleep(confirm_pause_s)
    tick.after = breaker.current_state
    return tick

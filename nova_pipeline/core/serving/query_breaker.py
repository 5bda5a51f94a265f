"""The circuit breaker of the searcher: consulted before a primary query, told its outcome after it.

A long-running service asks many queries at once, so the breaker must never be held while a query runs
(pybreaker's ``CircuitBreaker.call`` holds its lock for the whole call, which made ``nova serve`` answer
one primary query at a time). This is the classic three-state machine (Nygard, *Release It!*, 2007) with
its lock held only for a state change:

* **closed**: every query may go to the primary; ``fail_max`` consecutive failures open it;
* **open**: no query goes to the primary (they are answered from the backup store) until
  ``reset_timeout_s`` has passed;
* **half-open**: one trial query at a time goes to the primary; success closes the breaker, failure opens
  it again for another ``reset_timeout_s``. Queries that arrive while a trial runs are answered from the
  backup store.

Defaults come from :class:`~nova_pipeline.core.serving.failover.FailoverSettings` (3 failures, 30 s). The
health sensor keeps its own breaker in its cursor (:mod:`.breaker`); the two never share state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "QueryBreaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class QueryBreaker:
    """Thread-safe breaker of primary queries.

    Args:
        fail_max: consecutive failures that open it (at least 1).
        reset_timeout_s: seconds an open breaker waits before letting one trial query through.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self, fail_max: int = 3, reset_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        self.fail_max = max(1, int(fail_max))
        self.reset_timeout_s = float(reset_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False  # a half-open trial is in flight

    @property
    def current_state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (an open breaker whose timeout passed reads half-open)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
                return HALF_OPEN
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        return self._failures

    def allow(self) -> bool:
        """Whether this query may go to the primary. In half-open, True for exactly one caller until that
        caller reports its outcome (:meth:`success` or :meth:`failure`)."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.reset_timeout_s:
                    return False
                self._state = HALF_OPEN
            if self._trial:  # half-open, and the trial is still out
                return False
            self._trial = True
            return True

    def success(self) -> None:
        """A primary query answered: close the breaker and reset the count."""
        with self._lock:
            self._state, self._failures, self._trial = CLOSED, 0, False

    def failure(self) -> None:
        """A primary query failed or ran past its deadline: count it; open at ``fail_max`` (at once when it
        was the half-open trial)."""
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.fail_max:
                self._state, self._opened_at = OPEN, self._clock()
            self._trial = False

"""The searcher's breaker: never held during a query, and the three states."""

import threading

from nova_pipeline.core.serving.query_breaker import CLOSED, HALF_OPEN, OPEN, QueryBreaker


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_fail_max_failures_open_it_and_a_success_in_between_resets_the_count():
    b = QueryBreaker(3, 30, Clock())
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.current_state == CLOSED and b.allow()
    b.failure()
    assert b.current_state == OPEN and not b.allow()


def test_after_the_timeout_one_trial_at_a_time_decides():
    clock = Clock()
    b = QueryBreaker(1, 30, clock)
    b.failure()
    clock.t = 29.9
    assert not b.allow()
    clock.t = 30.0
    assert b.current_state == HALF_OPEN
    assert b.allow() and not b.allow() and not b.allow()  # the trial, then everyone else waits for it
    b.failure()  # the trial failed: open again, for another 30 s from now
    assert b.current_state == OPEN and not b.allow()
    clock.t = 59.9
    assert not b.allow()
    clock.t = 60.0
    assert b.allow()
    b.success()
    assert b.current_state == CLOSED and b.allow() and b.allow()


def test_asking_never_waits_for_a_query_in_flight():
    b = QueryBreaker(3, 30)
    inside = threading.Event()
    done = threading.Event()

    def slow_query():
        assert b.allow()
        inside.set()
        done.wait(5)  # the query runs; the breaker is not held
        b.success()

    t = threading.Thread(target=slow_query)
    t.start()
    assert inside.wait(5)
    answers = [b.allow() for _ in range(100)]  # would block on a lock held across the query
    done.set()
    t.join()
    assert all(answers)

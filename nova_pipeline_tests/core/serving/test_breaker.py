"""The health sensor's circuit breaker (core/serving/breaker.py): its state as a cursor's dict, and one tick
of probes through it, with the confirmation pause really slept (a sensor tick that crashed on it would
leave the primary unwatched)."""

import datetime as dt
import json
import time

import pybreaker
import pytest

from nova_pipeline.core.serving.breaker import DictStorage, Tick, evaluate, make_breaker
from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.probe import Probe


def scripted(results):
    results = list(results)
    calls = []

    def probe():
        ok = results.pop(0) if results else True
        calls.append(time.monotonic())
        return Probe(ok=ok, seconds=0.0, count=3 if ok else None, error="" if ok else f"refused {len(calls)}")

    probe.calls = calls
    return probe


def ago(seconds):
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat()


def test_the_storage_is_a_json_dict_with_defaults_and_keeps_what_it_is_given():
    s = DictStorage()
    assert s.data == {"state": "closed", "counter": 0, "success_counter": 0, "opened_at": None}
    assert s.state == "closed" and s.counter == 0 and s.success_counter == 0 and s.opened_at is None
    s.increment_counter()
    s.increment_counter()
    s.increment_success_counter()
    assert (s.counter, s.success_counter) == (2, 1)
    s.reset_counter()
    s.reset_success_counter()
    assert (s.counter, s.success_counter) == (0, 0)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    s.opened_at = when
    s.state = "open"
    again = DictStorage(json.loads(json.dumps(s.data)))  # through a cursor
    assert again.state == "open" and again.opened_at == when and again.data == s.data
    assert DictStorage({"counter": 2}).data["state"] == "closed" and DictStorage({"counter": 2}).counter == 2
    assert s.name == "primary_vector_store"


def test_make_breaker_uses_the_settings_threshold_and_timeout():
    b, storage = make_breaker({"counter": 1}, FailoverSettings(failure_threshold=5, half_open_after_s=7))
    assert b.fail_max == 5 and b.reset_timeout == 7 and b.name == "primary_vector_store"
    assert b.fail_counter == 1 and storage.counter == 1


def test_a_failed_probe_is_confirmed_after_a_real_pause_and_opens_the_breaker_in_one_tick():
    breaker, storage = make_breaker(None, FailoverSettings())
    probe = scripted([False, False, False])
    started = time.monotonic()
    t = evaluate(breaker, probe, confirm_pause_s=0.05)
    elapsed = time.monotonic() - started
    assert t.probes == [False, False, False] and t.errors == ["refused 1", "refused 2", "refused 3"]
    gaps = [b - a for a, b in zip(probe.calls, probe.calls[1:])]
    assert all(g >= 0.045 for g in gaps) and elapsed >= 0.09  # two pauses between three probes
    assert (t.before, t.after, t.opened, t.closed, t.skipped) == ("closed", "open", True, False, False)
    assert storage.state == "open" and storage.opened_at is not None


def test_a_blip_is_not_an_outage():
    breaker, storage = make_breaker(None, FailoverSettings())
    t = evaluate(breaker, scripted([False, True]), confirm_pause_s=0.01)
    assert t.probes == [False, True] and t.after == "closed" and not t.opened and storage.counter == 0
    t = evaluate(breaker, scripted([True]), confirm_pause_s=0.01)
    assert t.probes == [True] and not t.closed  # it was closed before too


def test_open_before_the_timeout_skips_without_probing_and_after_it_one_trial_decides():
    settings = FailoverSettings()
    breaker, _ = make_breaker({"state": "open", "counter": 3, "opened_at": ago(5)}, settings)
    probe = scripted([True])
    t = evaluate(breaker, probe, confirm_pause_s=0.01)
    assert t.skipped and t.probes == [] and probe.calls == [] and t.after == "open" and not t.opened

    breaker, storage = make_breaker({"state": "open", "counter": 3, "opened_at": ago(31)}, settings)
    t = evaluate(breaker, scripted([False, False]), confirm_pause_s=0.01)
    assert t.probes == [False] and t.after == "open" and t.opened and not t.skipped  # one trial only
    assert dt.datetime.fromisoformat(storage.data["opened_at"]) > dt.datetime.fromisoformat(ago(2))

    breaker, _ = make_breaker({"state": "open", "counter": 3, "opened_at": ago(31)}, settings)
    t = evaluate(breaker, scripted([True]), confirm_pause_s=0.01)
    assert t.probes == [True] and t.before == "open" and t.after == "closed" and t.closed


def test_the_threshold_bounds_the_probes_of_one_tick():
    breaker, _ = make_breaker(None, FailoverSettings(failure_threshold=2))
    t = evaluate(breaker, scripted([False] * 5), confirm_pause_s=0.0)
    assert t.probes == [False, False] and t.after == "open"
    breaker, _ = make_breaker({"counter": 1}, FailoverSettings(failure_threshold=3))
    t = evaluate(breaker, scripted([False] * 5), confirm_pause_s=0.0)
    assert t.probes == [False, False] and t.after == "open"  # counts on from the cursor's counter


def test_a_probe_that_raises_is_not_swallowed():
    breaker, _ = make_breaker(None, FailoverSettings())

    def broken():
        raise RuntimeError("bug in the probe")

    with pytest.raises(RuntimeError, match="bug in the probe"):
        evaluate(breaker, broken, confirm_pause_s=0.0)


@pytest.mark.parametrize(
    "tick, opened, closed",
    [
        (Tick("closed", "open", [False, False, False]), True, False),
        (Tick("half-open", "open", [False]), True, False),
        (Tick("open", "open", [], skipped=True), False, False),
        (Tick("open", "open", [True]), False, False),
        (Tick("open", "closed", [True]), False, True),
        (Tick("half-open", "closed", [True]), False, True),
        (Tick("closed", "closed", [True]), False, False),
    ],
)
def test_tick_says_when_the_breaker_opened_or_closed(tick, opened, closed):
    assert (tick.opened, tick.closed) == (opened, closed)
    assert pybreaker.STATE_OPEN == "open" and pybreaker.STATE_CLOSED == "closed"


def test_the_default_pause_is_half_a_second_between_probes():
    breaker, _ = make_breaker(None, FailoverSettings())
    probe = scripted([False, False, False])
    evaluate(breaker, probe)
    gaps = [b - a for a, b in zip(probe.calls, probe.calls[1:])]
    assert len(gaps) == 2 and all(0.45 <= g < 1.0 for g in gaps), gaps


def test_a_probe_that_fails_without_a_message_is_still_reported():
    breaker, _ = make_breaker(None, FailoverSettings())

    def silent():
        return Probe(ok=False, seconds=0.0, error="")

    t = evaluate(breaker, silent, confirm_pause_s=0.0)
    assert len(t.errors) == 3 and all(e == "the probe failed without saying why" for e in t.errors)


def test_the_success_counter_counts():
    s = DictStorage()
    for _ in range(3):
        s.increment_success_counter()
    assert s.success_counter == 3

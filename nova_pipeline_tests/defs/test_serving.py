"""The failover sensors, evaluated with build_sensor_context and a scripted probe (no server needed)."""

import datetime as dt
import json
import time

import dagster as dg
import pytest

from nova_pipeline.core.serving.breaker import evaluate, make_breaker
from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.pointer import FailoverState, read_state, write_state
from nova_pipeline.core.serving.probe import Probe
from nova_pipeline.defs import serving
from nova_pipeline.defs.resources import NovaSettings
from nova_pipeline_tests.conftest import fake_embedder_resource


class ScriptedProbe:
    """Probe results in order (True: healthy), then healthy."""

    def __init__(self, results):
        self.results = list(results)
        self.calls = 0

    def __call__(self, *a, **k):
        self.calls += 1
        ok = self.results.pop(0) if self.results else True
        return Probe(ok=ok, seconds=0.01, count=10 if ok else None, error="" if ok else "connection refused")


@pytest.fixture
def probes(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)  # the in-tick confirmation pause

    def install(results):
        p = ScriptedProbe(results)
        monkeypatch.setattr(serving, "probe", p)
        return p

    return install


def tick(sensor, home, cursor=None):
    ctx = dg.build_sensor_context(
        cursor=cursor,
        resources={"nova": NovaSettings(nova_home=str(home)), "embedder": fake_embedder_resource()},
    )
    result = sensor(ctx)
    return result, ctx.cursor


def test_closed_opens_after_three_failed_probes_and_requests_failover(tmp_path, probes):
    p = probes([False, False, False])
    result, cursor = tick(serving.primary_vector_store_health, tmp_path)
    assert p.calls == 3  # one failure confirmed by two more in the same tick
    assert isinstance(result, dg.RunRequest) and result.run_key.startswith("failover-")
    assert json.loads(cursor)["state"] == "open"
    assert read_state(tmp_path).breaker == "open"


def test_a_failure_then_a_success_keeps_it_closed(tmp_path, probes):
    p = probes([False, True])
    result, cursor = tick(serving.primary_vector_store_health, tmp_path)
    assert p.calls == 2 and isinstance(result, dg.SkipReason)
    data = json.loads(cursor)
    assert (data["state"], data["counter"]) == ("closed", 0)  # the success reset the count


def test_open_waits_then_half_opens_and_closes_on_success(tmp_path, probes):
    p = probes([False, False, False])
    _, cursor = tick(serving.primary_vector_store_health, tmp_path)
    p = probes([True])
    result, cursor = tick(serving.primary_vector_store_health, tmp_path, cursor)  # before the timeout
    assert p.calls == 0 and "no probe until it half-opens" in result.skip_message
    data = json.loads(cursor)
    data["opened_at"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=31)).isoformat()
    result, cursor = tick(serving.primary_vector_store_health, tmp_path, json.dumps(data))
    assert p.calls == 1  # one trial probe in half-open
    assert json.loads(cursor)["state"] == "closed" and read_state(tmp_path).breaker == "closed"


def test_half_open_opens_again_on_failure(tmp_path, probes):
    probes([False, False, False])
    _, cursor = tick(serving.primary_vector_store_health, tmp_path)
    data = json.loads(cursor)
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=31)).isoformat()
    data["opened_at"] = old
    p = probes([False])
    result, cursor = tick(serving.primary_vector_store_health, tmp_path, json.dumps(data))
    assert p.calls == 1
    data = json.loads(cursor)
    assert data["state"] == "open" and data["opened_at"] > old  # opened again, the timeout starts over
    assert isinstance(result, dg.RunRequest)  # not failed over yet: ask again


def test_the_trial_probe_runs_while_half_open(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    settings = FailoverSettings()
    opened = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=31)).isoformat()
    breaker, storage = make_breaker({"state": "open", "counter": 3, "opened_at": opened}, settings)
    seen = []

    def probe():
        seen.append(storage.state)
        return Probe(ok=True, seconds=0.0, count=1)

    t = evaluate(breaker, probe)
    assert seen == ["half-open"] and t.before == "open" and t.after == "closed" and t.closed


def test_recovered_waits_for_the_restore_delay(tmp_path, probes):
    write_state(tmp_path, FailoverState(active="backup"))
    probes([True, True])
    result, cursor = tick(serving.primary_recovered, tmp_path)
    assert isinstance(result, dg.SkipReason) and "restore delay" in result.skip_message
    earlier = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=61)).isoformat()
    result, cursor = tick(serving.primary_recovered, tmp_path, earlier)
    assert isinstance(result, dg.RunRequest) and result.run_key == f"failback-{earlier}"
    probes([False])
    result, cursor = tick(serving.primary_recovered, tmp_path, earlier)
    assert "still down" in result.skip_message and cursor is None  # the clock starts over


def test_a_damaged_pointer_is_logged_and_the_sensors_keep_running(tmp_path, probes, caplog):
    from nova_pipeline.core.serving.pointer import state_path

    probes([True, True])
    write_state(tmp_path, FailoverState())
    state_path(tmp_path).write_text("\x00\x00 not json")  # a torn write, a bad edit
    result, _ = tick(serving.primary_vector_store_health, tmp_path)
    assert isinstance(result, dg.SkipReason) and "healthy" in result.skip_message
    assert "last good copy" in caplog.text
    result, _ = tick(serving.primary_recovered, tmp_path)
    assert isinstance(result, dg.SkipReason)
    assert json.loads(state_path(tmp_path).read_text())["active"] == "primary"  # repaired by the next write

"""Watching runs over HTTP: POST /api/v1/admin/rebuild, GET /api/v1/admin/runs/{run_id} (per-phase progress)
and its Server-Sent Events stream, against a rebuild running in this process on a real instance; and the
runless materializations that nova watch reports."""

import json
import threading
import time

import dagster as dg
import httpx
import pytest

from nova_pipeline.core.live.report import UpdateReport
from nova_pipeline.core.protect import audit
from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.tokens import TokenStore
from nova_pipeline.core.settings import Settings
from nova_pipeline.deploy.live_events import LiveEventReporter
from nova_pipeline.service.app import create_app
from nova_pipeline_tests.conftest import FakeEmbedder, ServerThread, materialize_rebuild


@pytest.fixture
def instance_home(tmp_path, monkeypatch):
    dhome = tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dhome))
    with dg.DagsterInstance.get():  # its SQLite storages are created once, before threads race to
        pass
    return dhome


def sse_events(url, headers, timeout=120):
    """``[(event, data)]`` of an SSE stream, read until the server ends it."""
    out, event = [], None
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line.split(":", 1)[1])))
    return out


def test_a_run_in_flight_is_streamed_phase_by_phase_until_it_ends(json_tree, tmp_path, instance_home):
    home = tmp_path / "home"
    home.mkdir()
    viewer = {"Authorization": f"Bearer {TokenStore(home).create('dash', 'viewer')}"}
    app = create_app(Settings.build(None, home, require_source=False), FailoverSettings(), FakeEmbedder())
    done = threading.Event()

    def rebuild():
        with dg.DagsterInstance.get() as instance:
            materialize_rebuild(json_tree, home, instance)
        done.set()

    with ServerThread(app) as s:
        threading.Thread(target=rebuild, daemon=True).start()
        deadline = time.monotonic() + 60
        run_id = None
        while run_id is None and time.monotonic() < deadline:
            with dg.DagsterInstance.get() as instance:
                runs = instance.get_runs(limit=1)
            run_id = runs[0].run_id if runs else None
            time.sleep(0.05)
        assert run_id, "the rebuild never started"
        events = sse_events(f"{s.url}/api/v1/admin/runs/{run_id}/events", viewer)
        assert done.wait(120)
        kinds = [e for e, _ in events]
        phases = {(d["phase"], d["status"]) for e, d in events if e == "phase"}
        assert {("scan", "running"), ("scan", "done"), ("embed", "done"), ("lexical", "done")} <= phases
        assert kinds[-1] == "end" and events[-1][1]["status"] == "SUCCESS"
        end = events[-1][1]
        embed = next(p for p in end["phases"] if p["name"] == "embed")
        assert embed["status"] == "done" and embed["summary"]["chunks"] > 0 and embed["seconds"] >= 0

        r = httpx.get(f"{s.url}/api/v1/admin/runs/{run_id[:8]}", headers=viewer)
        assert r.status_code == 200 and r.json()["status"] == "SUCCESS" and r.json()["run_id"] == run_id
        assert all(
            p["status"] == "done" for p in r.json()["phases"] if p["name"] in ("scan", "chunk", "embed")
        )
        assert httpx.get(f"{s.url}/api/v1/admin/runs/zzzz", headers=viewer).status_code == 400
        assert httpx.get(f"{s.url}/api/v1/admin/runs/{'0' * 8}", headers=viewer).status_code == 404
        assert httpx.get(f"{s.url}/api/v1/admin/runs/{'0' * 8}/events", headers=viewer).status_code == 404
        assert httpx.get(f"{s.url}/api/v1/admin/runs/{run_id}/events").status_code == 401
    actions = {(r["action"], r["outcome"]) for r in audit.read(home)}
    assert ("admin run events", "ok") in actions and ("admin run progress", "ok") in actions


def test_post_rebuild_launches_the_job_for_admins_only(tmp_path, instance_home, monkeypatch):
    from nova_pipeline.deploy import instance as instance_mod

    home = tmp_path / "home"
    home.mkdir()
    tokens = TokenStore(home)
    admin = {"Authorization": f"Bearer {tokens.create('ops', 'admin')}"}
    viewer = {"Authorization": f"Bearer {tokens.create('dash', 'viewer')}"}
    launched = []

    def fake_launch(job, run_config=None, tags=None, timeout=300):  # no daemon here: record the request
        with dg.DagsterInstance.get() as instance:
            run = instance.create_run_for_job(dg.GraphDefinition(job).to_job(), tags=tags)
        launched.append((job, tags))
        return run.run_id

    monkeypatch.setattr(instance_mod, "launch_job", fake_launch)
    app = create_app(Settings.build(None, home, require_source=False), FailoverSettings(), FakeEmbedder())
    with ServerThread(app) as s:
        assert httpx.post(f"{s.url}/api/v1/admin/rebuild", headers=viewer).status_code == 403
        r = httpx.post(f"{s.url}/api/v1/admin/rebuild", headers=admin)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["job"] == "rebuild" and body["progress"] == f"/api/v1/admin/runs/{body['run_id']}"
    assert launched == [("rebuild", {"nova/requested_by": "admin api"})]
    records = [r for r in audit.read(home) if r["action"] == "admin rebuild"]
    assert [r["outcome"] for r in records][-1] == "ok" and records[-1]["details"]["run_id"] == body["run_id"]


def test_live_updates_reach_the_asset_history_as_runless_materializations(instance_home):
    with dg.DagsterInstance.get() as instance:
        reporter = LiveEventReporter(instance, interval_s=0.5)
        for i in range(3):  # three saves within one second: one event per asset
            reporter.submit(
                UpdateReport(
                    kind="update",
                    files={"changed": 1},
                    paths=[f"a{i}.py"],
                    chunks=10,
                    chunks_added=1,
                    chunks_deleted=1,
                    embedded=1,
                    to_searchable_s=0.05 * (i + 1),
                )
            )
        reporter.submit(UpdateReport(kind="unchanged"))  # not reported
        time.sleep(1.5)
        reporter.submit(UpdateReport(kind="update", files={"added": 2}, chunks=12, chunks_added=2))
        reporter.close()
        records = instance.fetch_materializations(dg.AssetKey("vector_index"), limit=10).records
        assert len(records) == 2  # batched: at most one event per asset per second
        newest, older = (r.asset_materialization.metadata for r in records)
        assert (
            older["updates"].value == 3 and older["chunks_added"].value == 3 and older["live"].value is True
        )
        assert older["to_searchable_s"].value == pytest.approx(0.15)
        assert older["paths"].value == ["a0.py", "a1.py", "a2.py"]
        assert newest["updates"].value == 1 and newest["files_added"].value == 2
        assert records[0].run_id == ""  # runless
        for asset in ("source_files", "source_chunks", "lexical_index"):
            assert len(instance.fetch_materializations(dg.AssetKey(asset), limit=10).records) == 2

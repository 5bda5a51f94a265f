"""nova serve over real HTTP: search, tokens and roles, the admin API launching real runs, the audit log,
runtime log levels. The service is a subprocess on a free loopback port, stopped by its pid."""

import os
import signal
import sys
import time

import dagster as dg
import httpx
import pytest

from nova_pipeline.core.index.embedding import bundled_fingerprint
from nova_pipeline.core.index.vector_store import get_collection, open_client
from nova_pipeline.core.protect import audit, backup
from nova_pipeline.core.serving.tokens import TokenStore
from nova_pipeline.defs.resources import EmbedderResource
from nova_pipeline_tests.conftest import free_port, materialize_rebuild, start_process, stop_group, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

DEFAULT_COORDINATOR = """run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


def test_admin_api_roles_confirmations_runs_and_audit(json_tree, tmp_path):
    home, dhome = tmp_path / "home", tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text(DEFAULT_COORDINATOR)  # launched runs start at once, no daemon needed
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance, embedder=EmbedderResource()).success
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"NOVA_HOME": home, "DAGSTER_HOME": dhome, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    log_path = tmp_path / "serve.log"
    proc = start_process(
        [sys.executable, "-m", "nova_pipeline.cli", "serve", "--port", str(port)], env, log_path
    )
    try:
        wait_until(lambda: _get(f"{base}/healthz").status_code == 200, 120, what="nova serve answering")
        # no token file: searches are open on loopback, admin calls refused with how to create a token
        body = _get(f"{base}/search?q=decode+json").json()
        assert body["store"] == "primary" and body["mode"] == "hybrid"
        assert {"vector_score", "lexical_score", "matched_terms"} <= set(body["hits"][0])
        body = _get(f"{base}/search?q=JSONEncoder&mode=lexical&path=json/enc*&k=3").json()
        assert body["hits"] and {h["path"] for h in body["hits"]} == {"json/encoder.py"}
        assert all(h["vector_score"] is None and h["matched_terms"] for h in body["hits"])
        assert _get(f"{base}/search?q=x&mode=fuzzy").status_code == 400
        r = httpx.post(f"{base}/api/v1/admin/backup")
        assert r.status_code == 403 and "nova token create" in r.json()["error"]

        tokens = TokenStore(home)
        admin, viewer = tokens.create("ops", "admin"), tokens.create("grafana", "viewer")
        a, v = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {viewer}"}
        assert _get(f"{base}/api/v1/admin/status").status_code == 401  # no token
        assert _get(f"{base}/search?q=decode+json").status_code == 401  # tokens exist: searches need one too
        assert (
            _get(f"{base}/api/v1/admin/status", headers={"Authorization": "Bearer nova_x_y"}).status_code
            == 401
        )
        assert _get(f"{base}/search?q=decode+json", headers=v).status_code == 200
        assert _get(f"{base}/api/v1/admin/stats", headers=v).json()["vector_store"]["vectors"] > 0
        assert (
            httpx.post(f"{base}/api/v1/admin/backup", headers=v).status_code == 403
        )  # a viewer cannot mutate

        col = get_collection(open_client(home), bundled_fingerprint(), create=False)
        count = col.count()
        r = httpx.delete(f"{base}/api/v1/admin/clear", headers=a)
        assert r.status_code == 400 and "confirm=true" in r.json()["error"]
        assert col.count() == count  # untouched

        page = _get(f"{base}/api/v1/admin/knowledge-base?limit=5&offset=2", headers=v).json()
        assert page["total"] == count and len(page["items"]) == 5 and page["items"][0]["metadata"]["path"]

        r = httpx.post(f"{base}/api/v1/admin/backup", headers=a, timeout=120)
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        done = wait_until(
            lambda: (lambda b: b if b.get("status") in ("SUCCESS", "FAILURE") else None)(
                _get(f"{base}/api/v1/admin/backup/{run_id}", headers=v).json()
            ),
            180,
            what="the backup run finishing",
        )
        assert done["status"] == "SUCCESS" and done["job"] == "backup"
        assert (
            _get(f"{base}/api/v1/admin/backups", headers=v).json()["backups"][0]["id"]
            == backup.newest_backup(home).id
        )

        os.kill(proc.pid, signal.SIGUSR1)  # one step more verbose, logged
        wait_until(
            lambda: "console log level INFO -> DEBUG" in (home / "logs" / "nova.jsonl").read_text(),
            20,
            what="the level change in the JSON log",
        )
    finally:
        stop_group(proc)
    records = [(r["who"], r["action"], r["outcome"]) for r in audit.read(home)]
    assert ("anonymous", "admin backup", "refused (403)") in records
    assert ("anonymous", "admin status", "refused (401)") in records
    assert ("grafana", "admin backup", "refused (403)") in records
    assert ("ops", "admin clear", "refused (400)") in records
    assert ("ops", "admin backup", "ok") in records and ("grafana", "admin knowledge-base", "ok") in records
    written = (
        log_path.read_text() + (home / "audit.log").read_text() + (home / "logs" / "nova.jsonl").read_text()
    )
    assert admin not in written and viewer not in written  # tokens never in a log
    assert admin.split("_", 2)[2] not in written


def test_serve_refuses_a_public_interface_without_tokens(tmp_path):
    from nova_pipeline_tests.cli.test_cli import nova

    out = nova(
        ["serve", "--host", "0.0.0.0", "--port", str(free_port())],
        {"NOVA_HOME": str(tmp_path)},
        tmp_path,
        timeout=60,
    )
    assert out.returncode == 2 and "without API tokens" in out.stderr.replace("\n", " ")


def _get(url, **kw):
    try:
        return httpx.get(url, timeout=30, **kw)
    except httpx.HTTPError:
        time.sleep(0.2)
        return httpx.Response(599)

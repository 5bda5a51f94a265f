"""Failover end to end, with real processes on loopback: a `chroma run` primary, `nova serve`, and
`dagster-daemon run` with the failover sensors. SIGKILL the primary while searches run; restart it; the
daemon fails over and back. Bounded in time; every process is stopped by its pid."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline.defs.resources import EmbedderResource
from nova_pipeline_tests.conftest import (
    REPO_ROOT,
    free_port,
    http_json,
    rebuild_graph,
    resources_for,
    start_chroma,
    start_process,
    stop,
    stop_group,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

QUERIES = [
    "decode a JSON document into Python objects",
    "escape a string for JSON output",
    "command line tool to validate and pretty-print JSON",
    "scan a number in the input",
    "encoder that serializes dictionaries",
]


def runs_of(dhome: Path, job: str):
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        return instance.get_runs(filters=dg.RunsFilter(job_name=job))


class SearchLoop(threading.Thread):
    """Queries `nova serve` in a loop until stopped; records (status, store, top ids) per request."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.results, self.stop_flag = base, [], threading.Event()

    def run(self):
        i = 0
        while not self.stop_flag.is_set() and i < 2000:
            q = QUERIES[i % len(QUERIES)]
            status, body = http_json(f"{self.base}/search?q={q}&k=5", timeout=30)
            ok = status == 200
            self.results.append(
                (
                    time.monotonic(),
                    q,
                    status,
                    body.get("store") if ok else None,
                    [h["chunk_id"] for h in body["hits"]] if ok else body,
                )
            )
            i += 1
            time.sleep(0.1)


def test_a_killed_primary_costs_no_search_and_the_daemon_fails_over_and_back(
    json_tree, tmp_path, monkeypatch
):
    home, dhome = tmp_path / "home", tmp_path / "dagster_home"
    dhome.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dhome))  # this process reads the daemon's runs
    (dhome / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    port = free_port()
    url, chroma = start_chroma(tmp_path / "chroma-data", tmp_path / "chroma.log", port)
    procs = []
    try:
        # the index, built on the server with the real model; its golden copy makes the runtime copy
        with dg.instance_for_test() as instance:
            built = dg.materialize(
                rebuild_graph(),
                instance=instance,
                resources=resources_for(json_tree, home, EmbedderResource(), chroma_url=url),
            )
            assert built.success
        env = {
            "NOVA_HOME": home,
            "NOVA_CHROMA_URL": url,
            "DAGSTER_HOME": dhome,
            "HF_HUB_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False",
            "NOVA_FAILOVER_RESTORE_DELAY": "5",
            "NOVA_FAILOVER_HALF_OPEN_AFTER": "5",
            "NOVA_QUERY_TIMEOUT": "2",
        }
        serve_port = free_port()
        base = f"http://127.0.0.1:{serve_port}"
        procs.append(
            start_process(
                [sys.executable, "-m", "nova_pipeline.cli", "serve", "--port", str(serve_port)],
                env,
                tmp_path / "serve.log",
            )
        )
        wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 120, what="nova serve answering /healthz")
        before = {}
        for q in QUERIES:
            status, body = http_json(f"{base}/search?q={q}&k=5")
            assert status == 200 and body["store"] == "primary", body
            before[q] = [h["chunk_id"] for h in body["hits"]]
        procs.append(
            start_process(
                [
                    str(Path(sys.executable).with_name("dagster-daemon")),
                    "run",
                    "-m",
                    "nova_pipeline.definitions",
                ],
                env,
                tmp_path / "daemon.log",
                cwd=tmp_path,
            )
        )
        wait_until(
            lambda: "primary_vector_store_health" in (tmp_path / "daemon.log").read_text(),
            90,
            what="the daemon ticking the health sensor",
        )

        loop = SearchLoop(base)
        loop.start()
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(chroma.pid, signal.SIGKILL)  # the primary dies mid-loop
        chroma.wait()
        wait_until(lambda: read_state(home).failed_over, 90, what="the failover (pointer on the backup)")
        flipped_after = time.monotonic() - killed_at
        wait_until(
            lambda: any(r.is_success for r in runs_of(dhome, "failover")),
            60,
            what="a successful failover run",
        )
        time.sleep(3)
        loop.stop_flag.set()
        loop.join(60)

        after_kill = [r for r in loop.results if r[0] > killed_at]
        failed = [r for r in loop.results if r[2] != 200]
        assert failed == [], failed[:3]  # 0 failed searches
        assert after_kill and all(r[3] == "backup" for r in after_kill[3:])  # the backup answers
        for _, q, _, _, ids in after_kill:
            assert ids == before[q]  # the same top 5 as the primary gave
        status, body = http_json(f"{base}/search?q={QUERIES[0]}&k=5")
        assert body["stale_as_of"] and body["store"] == "backup"
        print(
            f"SIGKILL to the pointer flipping: {flipped_after:.1f} s; "
            f"{len(after_kill)} searches after the kill"
        )

        # the primary comes back on the same data: the sensors fail back, and the primary answers again
        chroma = start_chroma(tmp_path / "chroma-data", tmp_path / "chroma.log", port)[1]
        wait_until(
            lambda: not read_state(home).failed_over, 150, what="the failback (pointer on the primary)"
        )
        wait_until(
            lambda: any(r.is_success for r in runs_of(dhome, "failback")),
            60,
            what="a successful failback run",
        )
        status, body = wait_until(
            lambda: (lambda s, b: (s, b) if s == 200 and b["store"] == "primary" else None)(
                *http_json(f"{base}/search?q={QUERIES[1]}&k=5")
            ),
            30,
            what="the primary answering nova serve again",
        )
        assert [h["chunk_id"] for h in body["hits"]] == before[QUERIES[1]]
    finally:
        for p in procs:
            stop_group(p)
        stop(chroma)

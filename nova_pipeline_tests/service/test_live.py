"""nova serve while other processes write: a rebuild in another process is seen by the next searches, and
under 8 concurrent clients a rebuild, a dead primary, a failover and a failback cost no failed search.

The service runs on a live loopback port in this process (the fake embedder: exact texts find their own
chunk first); writers run in other processes, as in a deployment."""

import shutil
import threading
import time
from urllib.parse import quote

import httpx
import pytest

from nova_pipeline.core.keys import SOURCE_CHUNKS
from nova_pipeline.core.serving.failover import FailoverSettings, activate_backup, fail_back
from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import read_table, require_table
from nova_pipeline.service.app import create_app
from nova_pipeline_tests.conftest import FakeEmbedder, ServerThread, run_python, start_chroma, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

FP = FakeEmbedder(trim=True).fingerprint
REBUILD = (
    "import dagster as dg\n"
    "from nova_pipeline_tests.conftest import FakeEmbedder, fake_embedder_resource as fake\n"
    "from nova_pipeline_tests.conftest import rebuild_graph, resources_for\n"
    "with dg.instance_for_test() as instance:\n"
    "    model = fake(FakeEmbedder(trim=True))\n"
    "    resources = resources_for({src!r}, {home!r}, model, chroma_url={url!r})\n"
    "    assert dg.materialize(rebuild_graph(), resources=resources, instance=instance).success\n"
)
FRESH_WITHIN_S = 3.0  # a rebuild's writes reach the service's answers within this (a generation change)


def rebuild_elsewhere(src, home, url=""):
    run_python(REBUILD.format(src=str(src), home=str(home), url=url), timeout=300)


def edit_tree(src):
    """5 files changed (a unique function appended to each) and 1 deleted; returns the deleted path."""
    files = sorted(p for p in (src / "json").glob("*.py") if p.name != "__init__.py")
    for i, p in enumerate(files[:5]):
        p.write_text(p.read_text() + f"\n\ndef zebra_quokka_marshal_{i}(s):\n    return s[::-{i + 1}]\n")
    gone = src / "json" / "tool.py"
    gone.unlink()
    return "json/tool.py"


def new_chunks(home):
    chunks = read_table(home, SOURCE_CHUNKS)
    return chunks[chunks["text"].str.contains("zebra_quokka_marshal_")]


def answers_reflect_the_rebuild(base, home, deleted_path):
    """The service finds each new function's chunk first by its exact text, and nothing of the deleted
    file."""
    for row in new_chunks(home).itertuples():
        hits = httpx.get(f"{base}/search?q={quote(row.text[:1500])}&mode=vector&k=3", timeout=30).json()[
            "hits"
        ]
        if not hits or hits[0]["chunk_id"] != row.chunk_id:
            return False
    body = httpx.get(f"{base}/search?q=json.tool+main+infile+outfile&k=20", timeout=30).json()
    return all(h["path"] != deleted_path for h in body["hits"])


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def test_the_service_sees_a_rebuild_made_by_another_process_embedded(json_tree, tmp_path):
    home = tmp_path / "home"
    rebuild_elsewhere(json_tree, home)
    app = create_app(
        Settings.build(None, home, require_source=False), FailoverSettings(), FakeEmbedder(trim=True)
    )
    with ServerThread(app) as s:
        before = httpx.get(f"{s.url}/search?q=decode&mode=vector&k=3").json()
        assert before["store"] == "primary"
        deleted = edit_tree(json_tree)
        rebuild_elsewhere(json_tree, home)
        done = time.monotonic()
        seen = wait_for(lambda: answers_reflect_the_rebuild(s.url, home, deleted), FRESH_WITHIN_S)
        assert seen - done < FRESH_WITHIN_S
        assert app.state.searcher._views.opened >= 2  # it reopened after the other process wrote


class Clients:
    """8 threads searching in a loop; every status is kept."""

    QUERIES = ["decode a JSON document", "escape a string", "JSONDecodeError", "scanner", "dumps indent"]

    def __init__(self, base, n=8):
        self.base, self.statuses, self.stores, self.stop = base, [], [], threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True) for i in range(n)]

    def loop(self, i):
        with httpx.Client(base_url=self.base, timeout=30) as c:
            n = 0
            while not self.stop.is_set() and n < 5000:
                q = self.QUERIES[(i + n) % len(self.QUERIES)]
                r = c.get(f"/search?q={q}&k=5&mode={'hybrid' if n % 2 else 'vector'}")
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.stores.append(r.json()["store"])
                n += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_chaos_eight_clients_through_a_rebuild_a_dead_primary_failover_and_failback(json_tree, tmp_path):
    home = tmp_path / "home"
    url, chroma = start_chroma(tmp_path / "chroma-data", tmp_path / "chroma.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        rebuild_elsewhere(json_tree, home, url)
        settings = Settings.build(None, home, chroma_url=url, require_source=False)
        failover = FailoverSettings(query_timeout_s=1.0, failure_threshold=3, half_open_after_s=2.0)
        app = create_app(settings, failover, FakeEmbedder(trim=True))
        with ServerThread(app) as s, Clients(s.url) as clients:
            time.sleep(1.0)
            deleted = edit_tree(json_tree)
            rebuild_elsewhere(json_tree, home, url)  # 5 files changed, 1 deleted, while 8 clients search
            wait_for(lambda: answers_reflect_the_rebuild(s.url, home, deleted), FRESH_WITHIN_S)
            stop(chroma, timeout=0)  # the primary dies (SIGTERM, then SIGKILL)
            time.sleep(3.0)
            activate_backup(home, failover, "chaos test: the primary died", "test")
            assert read_state(home).failed_over
            time.sleep(2.0)
            url2, chroma = start_chroma(tmp_path / "chroma-data", tmp_path / "chroma.log", port=port)
            fail_back(home, url, FP, lambda: require_table(home, SOURCE_CHUNKS), "test")
            assert not read_state(home).failed_over
            time.sleep(2.0)
        assert len(clients.statuses) > 100
        failed = [c for c in clients.statuses if c != 200]
        assert failed == [], f"{len(failed)} failed searches of {len(clients.statuses)}: {set(failed)}"
        assert {"primary", "backup"} <= set(clients.stores)
        assert clients.stores[-1] == "primary"
    finally:
        stop(chroma)
        shutil.rmtree(tmp_path / "chroma-data", ignore_errors=True)


class RandomUnderTheModelsName(FakeEmbedder):
    """Hash vectors under the bundled model's fingerprint: builds the index the real model will then keep
    live (only the edit's chunk is embedded by the real model)."""

    def __init__(self):
        from nova_pipeline.core.index.embedding import bundled_fingerprint

        super().__init__()
        self.fingerprint = bundled_fingerprint()


def test_nova_serve_watch_answers_a_save_within_seconds_and_stops_cleanly(json_tree, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from nova_pipeline_tests.conftest import build_home, free_port

    home = tmp_path / "home"
    build_home(json_tree, home, RandomUnderTheModelsName())
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))},
        "NOVA_HOME": str(home),
        "NOVA_SOURCE_DIR": str(json_tree),
        "HF_HUB_OFFLINE": "1",
    }
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nova_pipeline.cli", "serve", "--watch", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(2)  # the watcher's catch-up
        decoder = json_tree / "json" / "decoder.py"
        decoder.write_text(decoder.read_text() + "\n\ndef quixotic_live_helper():\n    return 7\n")
        written, found = time.monotonic(), None
        while time.monotonic() - written < 60:
            hits = httpx.get(f"{base}/search", params={"q": "quixotic_live_helper", "k": 1}).json()["hits"]
            # a short function at the end of a file shares the chunk of the one before it
            if hits and "def quixotic_live_helper" in hits[0]["symbol"]:
                found = time.monotonic() - written
                break
            time.sleep(0.05)
        assert found is not None, (tmp_path / "serve.log").read_text()[-3000:]
        assert found < 30  # the first save also loads the model (a few seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    text = (tmp_path / "serve.log").read_text()
    # uvicorn shuts down, then re-raises SIGTERM: exit -15 after a clean stop is its convention
    assert code in (0, -signal.SIGTERM), (code, text[-3000:])
    assert "stopped watching" in text and "Application shutdown complete" in text, text[-3000:]
    assert "Traceback" not in text

"""The searcher under concurrency and faults: queries run side by side, the deadline covers waiting, a
missing or empty primary falls back, a damaged pointer does not stop searches, the in-memory backup store
loads in the background, and views follow other processes' writes."""

import shutil
import threading
import time

import pytest

from nova_pipeline.core.index.vector_store import fresh_client, get_collection
from nova_pipeline.core.keys import SOURCE_CHUNKS
from nova_pipeline.core.protect import golden
from nova_pipeline.core.serving import searcher as searcher_mod
from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.pointer import read_state, state_path
from nova_pipeline.core.serving.searcher import Searcher
from nova_pipeline.core.serving.views import ViewCache
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import read_table
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, run_python

FP = FakeEmbedder.fingerprint


@pytest.fixture
def home(json_tree, tmp_path):
    h = tmp_path / "home"
    build_home(json_tree, h)
    golden.promote(h, FP)
    golden.make_runtime_copy(h)
    return h


def searcher(home, **failover):
    return Searcher(
        Settings.build(None, home, require_source=False), FakeEmbedder(), FailoverSettings(**failover)
    )


def slow_queries(monkeypatch, seconds):
    real = searcher_mod.query

    def slow(col, *a, **k):
        time.sleep(seconds)
        return real(col, *a, **k)

    monkeypatch.setattr(searcher_mod, "query", slow)


def run_concurrently(fn, n):
    out, started = [None] * n, time.monotonic()

    def one(i):
        out[i] = (fn(), time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_four_slow_queries_run_side_by_side_on_the_primary(home, monkeypatch):
    """pybreaker held its lock for the whole call: four 1.5 s queries ended at 1.5, 3.0, 4.5 and 6.0 s."""
    s = searcher(home, query_timeout_s=2.0)
    slow_queries(monkeypatch, 1.5)
    results = run_concurrently(lambda: s.search("decode json", 3, mode="vector"), 4)
    assert all(r.store == "primary" and not r.fell_back for r, _ in results)
    assert max(t for _, t in results) < 2.5
    s.close()


def test_the_deadline_counts_the_wait_for_a_query_thread(home, monkeypatch):
    s = searcher(home, query_timeout_s=2.0)
    s._pool = searcher_mod.concurrent.futures.ThreadPoolExecutor(max_workers=1)  # one primary query at a time
    slow_queries(monkeypatch, 1.5)
    results = run_concurrently(lambda: s.search("decode json", 3, mode="vector"), 3)
    assert sorted(r.store for r, _ in results) == ["backup", "backup", "primary"]
    assert all("deadline" in r.primary_error for r, _ in results if r.fell_back)
    assert max(t for _, t in results) < 2.0 + 1.6  # the late ones answered from the backup, not after 4.5 s
    s.close()


@pytest.mark.parametrize("damage", ["moved away", "empty directory", "empty collection"])
def test_a_missing_or_empty_primary_is_a_failed_primary(home, damage):
    vectors = home / "vectors"
    if damage == "moved away":
        vectors.rename(home / "vectors.away")
    elif damage == "empty directory":
        shutil.rmtree(vectors)
        vectors.mkdir()
    else:
        with fresh_client(home) as client:
            client.delete_collection(get_collection(client, FP).name)
            get_collection(client, FP)
    s = searcher(home)
    r = s.search("decode json", 3)
    assert r.store == "backup" and r.fell_back and r.hits and "no index" in r.primary_error
    assert s.healthy()
    if damage == "empty directory":
        assert list(vectors.iterdir()) == []  # no chroma.sqlite3 made in it
    s.close()


def test_with_no_golden_copy_a_missing_primary_says_nothing_is_built(tmp_path):
    from nova_pipeline.core.errors import IndexNotBuiltError

    with pytest.raises(IndexNotBuiltError):
        searcher(tmp_path).search("anything", 3)


def test_a_damaged_pointer_is_read_as_its_last_good_copy_and_searches_go_on(home, caplog):
    from nova_pipeline.core.serving.pointer import set_breaker

    set_breaker(home, "open")  # a change: the last good copy now holds it
    state_path(home).write_text("{ not json")
    state = read_state(home)
    assert state.breaker == "open" and "last good copy" in state.recovered_from
    assert "unreadable" in caplog.text
    s = searcher(home)
    assert s.search("decode json", 3).store == "primary" and s.healthy()
    set_breaker(home, "closed")  # the next change repairs it
    assert read_state(home).recovered_from == "" and state_path(home).read_text().startswith("{")
    s.close()


def test_the_in_memory_backup_loads_in_the_background_and_the_disk_copy_answers_meanwhile(home, monkeypatch):
    s = Searcher(
        Settings.build(None, home, require_source=False),
        FakeEmbedder(),
        FailoverSettings(),
        prefer_memory=True,
    )
    gate = threading.Event()
    real = golden.import_export

    def slow_import(col, path):
        gate.wait(30)
        return real(col, path)

    monkeypatch.setattr(golden, "import_export", slow_import)
    loading = s.backup.preload()
    assert loading is not None and loading.is_alive()
    with s.backup.collection() as (col, _):  # while it loads: the runtime copy on disk, without waiting
        assert col.count() > 0 and s.backup.kind == "disk"
    gate.set()
    loading.join(30)
    with s.backup.collection():
        assert s.backup.kind == "memory"
    s.close()


def test_a_view_follows_writes_of_another_process_and_never_writes_itself(home):
    views = ViewCache(home, home / "vectors", FP)
    chunks = read_table(home, SOURCE_CHUNKS)
    victim = chunks["chunk_id"].iloc[0]
    with views.collection() as (col, count):
        assert col.get(ids=[victim])["ids"] == [victim]
    files = {p: p.read_bytes() for p in (home / "vectors").rglob("*") if p.is_file()}
    with views.collection() as (col, _):
        col.query(query_embeddings=FakeEmbedder().embed(["x"]), n_results=5)
        col.get(limit=3)
    assert {
        p: p.read_bytes() for p in (home / "vectors").rglob("*") if p.is_file()
    } == files  # reads write nothing
    run_python(
        "import sys\n"
        "from nova_pipeline.core.serving.failover import writing_to\n"
        f"with writing_to({str(home)!r}, None) as store:\n"
        f"    store.collection({FP!r}).delete(ids=[{victim!r}])\n"
    )
    with views.collection() as (col, new_count):
        assert new_count == count - 1 and col.get(ids=[victim])["ids"] == []
        hits = col.query(query_embeddings=FakeEmbedder().embed([chunks["text"].iloc[0]]), n_results=3)["ids"][
            0
        ]
        assert victim not in hits
    assert views.opened == 2
    views.close()

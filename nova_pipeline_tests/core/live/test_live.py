"""Live updates (core/live): each kind of change is applied exactly (the index equals a clean build's), a
burst coalesces, the guard stops a mass deletion and watching goes on, a kill -9 mid-update is caught up
without embedding anything twice, and quiet-time promotion happens once."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

from nova_pipeline.core.index import lexical_delta
from nova_pipeline.core.index.chunking import chunk_manifest
from nova_pipeline.core.index.embedding import Tokenizer
from nova_pipeline.core.index.embedding_cache import EmbeddingCache
from nova_pipeline.core.index.vector_store import existing_ids, fresh_client, get_collection
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions
from nova_pipeline.core.keys import SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.live.updater import LiveIndex
from nova_pipeline.core.live.watcher import Watcher
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import read_table
from nova_pipeline_tests.conftest import REPO_ROOT, FakeEmbedder, build_home

FP = FakeEmbedder.fingerprint


def clean_ids(src):
    """The chunk ids a clean build of ``src`` has."""
    tok = Tokenizer()
    chunks, _ = chunk_manifest(src, scan(ScanOptions(src)).manifest, None, tok.count, tok.max_seq_length)
    return set(chunks["chunk_id"])


def index_ids(home):
    with fresh_client(home) as client:
        vectors = existing_ids(get_collection(client, FP))
    lex = lexical_delta.load_live(home)
    live = {lex.ids[i] for i in range(len(lex.ids))}
    if isinstance(lex, lexical_delta.LiveLexicalIndex):
        live -= lex.delta.removed
    return vectors, live


def assert_exact(home, src):
    want = clean_ids(src)
    vectors, lexical_ids = index_ids(home)
    assert vectors == want and lexical_ids == want


@pytest.fixture
def live(json_tree, tmp_path):
    home = tmp_path / "home"
    build_home(json_tree, home)
    embedder = FakeEmbedder()
    li = LiveIndex(Settings.build(json_tree, home), embedder)
    report = li.catch_up()
    assert report.embedded == 0 and report.chunks_added == 0  # like an unchanged rebuild
    yield li
    li.close()


def test_edit_add_delete_and_rename_are_each_applied_exactly(live, json_tree):
    src, home = json_tree, live.settings.home
    decoder = src / "json" / "decoder.py"
    decoder.write_text(decoder.read_text() + "\n\ndef zorblax_unique_helper():\n    return 1\n")
    r = live.update()
    assert r.kind == "update" and r.files["changed"] == 1 and r.chunks_added >= 1 and r.embedded >= 1
    assert r.paths == ["json/decoder.py"] and r.lexical.startswith("delta")
    assert_exact(home, src)
    hits = lexical_delta.load_live(home).search("zorblax_unique_helper", 1)
    assert hits and lexical_delta.load_live(home).path_of(hits[0].row) == "json/decoder.py"

    (src / "json" / "extra.py").write_text("def brand_new_function():\n    return 'new'\n")
    r = live.update()
    assert r.files["added"] == 1 and r.chunks_added == 1
    assert_exact(home, src)

    (src / "json" / "tool.py").unlink()
    r = live.update()
    assert r.files["deleted"] == 1 and r.chunks_deleted >= 1 and r.chunks_added == 0
    assert_exact(home, src)

    (src / "json" / "scanner.py").rename(src / "json" / "scanner2.py")
    r = live.update()
    assert r.files == {"added": 1, "changed": 0, "deleted": 1}
    assert r.chunks_added == r.chunks_deleted > 0  # a chunk's text starts with its path: new ids
    assert_exact(home, src)

    assert live.update().kind == "unchanged"  # nothing happened since


def test_an_updates_patched_lexical_delta_equals_the_one_computed_from_every_chunk(live, json_tree):
    """An update patches the last delta with its own change (its cost follows the change); after an edit,
    an addition, a deletion and a revert to the base's text it equals the delta computed from the whole
    chunk table, and the table spliced late equals a clean chunking."""
    import pyarrow.parquet as pq

    from nova_pipeline.core.index import lexical

    src, home = json_tree, live.settings.home
    decoder, extra = src / "json" / "decoder.py", src / "json" / "extra.py"
    original = decoder.read_text()
    steps = [
        lambda: decoder.write_text(original + "\n\ndef patched_delta_probe():\n    return 3\n"),
        lambda: extra.write_text("def another_patched_probe():\n    return 4\n"),
        lambda: (src / "json" / "tool.py").unlink(),
        lambda: decoder.write_text(original),  # back to the base's chunks: they leave "removed"
    ]
    for step in steps:
        step()
        assert live.update().kind == "update"
        base = lexical.current_path(home)
        ids = pq.read_table(base / "docs.parquet", columns=["chunk_id"]).column("chunk_id")
        whole = lexical_delta.compute(ids.combine_chunks(), read_table(home, "source_chunks"), base.name)
        patched = lexical_delta.read(home) or lexical_delta.Delta(base=base.name)
        assert patched.base == whole.base and patched.removed == whole.removed
        assert sorted(patched.added["chunk_id"]) == sorted(whole.added["chunk_id"])
        tok = Tokenizer()
        clean, _ = chunk_manifest(src, scan(ScanOptions(src)).manifest, None, tok.count, tok.max_seq_length)
        table = read_table(home, "source_chunks")
        pd.testing.assert_frame_equal(table.astype(object), clean.astype(object), check_dtype=False)
        assert_exact(home, src)
    assert not any("decoder" in p for p in patched.added["path"])  # reverted: nothing of it added


def test_the_guard_refuses_a_mass_deletion_and_the_next_update_works(live, json_tree):
    src, home = json_tree, live.settings.home
    kept = src / "json" / "__init__.py"
    saved = {p: p.read_bytes() for p in (src / "json").glob("*.py")}
    for p in saved:
        if p != kept:
            p.unlink()
    before = index_ids(home)
    r = live.update()
    assert "this run would delete" in r.refused and not r.changed  # 4 of 5 files: 63 of 85 vectors
    assert index_ids(home) == before  # nothing was written
    for p, data in saved.items():
        p.write_bytes(data)
    r = live.update()
    assert not r.refused and r.kind in ("update", "unchanged")
    assert_exact(home, src)


def test_another_process_writing_the_tables_is_caught_up(live, json_tree, tmp_path):
    from nova_pipeline.core.tables import write_table

    src, home = json_tree, live.settings.home
    write_table(home, "source_chunks", read_table(home, "source_chunks"))  # a rebuild wrote it
    (src / "json" / "extra.py").write_text("def another_one():\n    pass\n")
    r = live.update()
    assert r.kind == "catch-up"  # reconciled against the collection, not the difference
    assert_exact(home, src)


def test_a_searcher_in_the_watchers_process_reads_its_client_and_sees_each_update(live, json_tree):
    """nova serve --watch: searches go through the watcher's own client (no view opened), see an update as
    soon as it is written, and go back to fresh views once another process wrote."""
    from nova_pipeline.core.locks import writer_lock
    from nova_pipeline.core.serving.searcher import Searcher

    src, home = json_tree, live.settings.home
    searcher = Searcher(live.settings, live.embedder, shared_primary=live.client.reading)
    try:
        decoder = src / "json" / "decoder.py"
        for name in ("glimmerwick_first", "glimmerwick_second"):
            decoder.write_text(decoder.read_text() + f"\n\ndef {name}():\n    return 1\n")
            assert live.update().chunks_added >= 1
            text = live.chunks[live.chunks["text"].str.contains(name)]["text"].iloc[0]
            hits = searcher.search(text, k=1, mode="vector").hits  # the fake embedder: its own text first
            assert hits and name in hits[0].text and hits[0].store == "primary"
        assert searcher._views.opened == 0  # every search read the watcher's client

        with writer_lock(home):  # another writer: the watcher's client may not see its writes
            pass
        with live.client.reading(FP) as shared:
            assert shared is None
        assert name in searcher.search(text, k=1, mode="vector").hits[0].text
        assert searcher._views.opened == 1  # a fresh view answered instead
    finally:
        searcher.close()


def test_a_separate_reader_answers_watch_updates_from_its_view_and_records_while_a_fresh_one_opens(
    live, json_tree, monkeypatch
):
    """A separate nova serve: after a watch update its view is out of date; it answers at once from that view
    with the update's record folded over it (the same ids as a fresh view), opens the fresh view on a thread,
    and answers from the fresh one once it is open. A write that left no record is waited for, as before."""
    import threading

    from nova_pipeline.core.index.recent_writes import Overlaid
    from nova_pipeline.core.locks import generation, writer_lock
    from nova_pipeline.core.serving.searcher import Searcher
    from nova_pipeline.core.serving.views import ViewCache

    src, home = json_tree, live.settings.home
    gate = threading.Event()
    behind = ViewCache._open_in_background
    monkeypatch.setattr(
        ViewCache, "_open_in_background", lambda self, *args: gate.wait(30) and behind(self, *args)
    )
    searcher = Searcher(live.settings, live.embedder)
    views = searcher._views
    try:
        searcher.search("decode", k=1)
        assert views.opened == 1
        with views.collection() as (_, first_count):
            pass
        decoder = src / "json" / "decoder.py"
        for name in ("quillfeather_first", "quillfeather_second"):  # the first function renamed, twice,
            text = re.sub(r"^def \w+\(", f"def {name}(", decoder.read_text(), count=1, flags=re.M)
            decoder.write_text(text)
            (src / "json" / f"{name}.py").write_text(f"def {name}_extra():\n    return 1\n")  # and a new file
            before = generation(home)
            r = live.update()
            assert r.chunks_added >= 1 and r.chunks_deleted >= 1
            assert (home / "vectors.writes" / f"{before}.npz").is_file()
            text = live.chunks[live.chunks["text"].str.contains(f"def {name}(", regex=False)]["text"].iloc[0]
            hits = searcher.search(text, k=1, mode="vector").hits
            assert hits and f"def {name}(" in hits[0].text and views.opened == 1  # the old view, and records
        queries = live.embedder.embed(list(live.chunks["text"].iloc[:: max(1, len(live.chunks) // 8)]))
        with views.collection() as (col, count), fresh_client(home) as client:
            fresh = get_collection(client, FP)
            # the count is fresh too (the view's own, counted when it opened, is not)
            assert isinstance(col, Overlaid) and count == fresh.count() > first_count
            assert (
                col.query(query_embeddings=queries, n_results=10)["ids"]
                == fresh.query(query_embeddings=queries, n_results=10)["ids"]
            )
        gate.set()
        deadline = time.monotonic() + 30
        while views.opened < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with views.collection() as (col, _):
            assert views.opened == 2 and not isinstance(col, Overlaid)  # the fresh view, opened behind
        assert f"def {name}(" in searcher.search(text, k=1, mode="vector").hits[0].text

        with writer_lock(home):  # another writer leaves no record: the reader opens a fresh view first
            pass
        with views.collection() as (col, _):
            assert views.opened == 3 and not isinstance(col, Overlaid)
    finally:
        gate.set()
        searcher.close()


def test_a_view_opened_behind_never_replaces_a_newer_one(live, json_tree, monkeypatch):
    """While the view behind is loading, another writer (no record) makes a query open a fresh view first;
    the view behind, done later, is closed instead of replacing that newer one."""
    import threading

    from nova_pipeline.core.locks import generation, writer_lock
    from nova_pipeline.core.serving.views import ViewCache

    home = live.settings.home
    gate = threading.Event()
    behind = ViewCache._open_in_background
    monkeypatch.setattr(
        ViewCache, "_open_in_background", lambda self, *args: gate.wait(30) and behind(self, *args)
    )
    views = ViewCache(home, home / "vectors", FP)
    try:
        with views.collection():
            pass
        decoder = json_tree / "json" / "decoder.py"
        decoder.write_text(decoder.read_text() + "\n\ndef behind_probe():\n    return 3\n")
        assert live.update().chunks_added >= 1
        with views.collection():  # the records answer; the view behind waits at the gate
            assert views.opened == 1 and views._opening
        with writer_lock(home):  # another writer leaves no record
            pass
        with views.collection():
            assert views.opened == 2 and views._current.generation == generation(home)
        gate.set()
        deadline = time.monotonic() + 30
        while views._opening and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not views._opening and views.opened == 2 and views._current.generation == generation(home)
    finally:
        gate.set()
        views.close()


def test_closing_the_watchers_client_waits_for_its_readers(live, json_tree):
    decoder = json_tree / "json" / "decoder.py"
    decoder.write_text(decoder.read_text() + "\n\ndef reader_wait_probe():\n    return 2\n")
    live.update()
    closed = threading.Event()
    with live.client.reading(FP) as shared:
        col, count = shared
        closer = threading.Thread(target=lambda: (live.close(), closed.set()))
        closer.start()
        time.sleep(0.3)
        assert not closed.is_set()  # the reader's client stays open
        assert col.count() == count
    closer.join(10)
    assert closed.is_set()
    with live.client.reading(FP) as shared:
        assert shared is None  # closed: nothing to share


def test_quiet_time_compacts_the_delta_and_promotes_once(live, json_tree):
    src, home = json_tree, live.settings.home
    promoted = []
    w = Watcher(
        live, lambda r: None, promote=lambda: promoted.append(1), promote_after_s=5, compact_after_s=2
    )
    for i in range(3):  # three saves
        (src / "json" / "extra.py").write_text(f"def save_{i}():\n    pass\n")
        w._last_event = time.monotonic()
        w._apply(None)
    assert w.updates == 3 and lexical_delta.delta_stamp(home) is not None
    t0 = w._last_event
    w.quiet_tasks(t0 + 1)
    assert promoted == [] and lexical_delta.delta_stamp(home) is not None  # not quiet long enough
    w.quiet_tasks(t0 + 3)
    assert lexical_delta.delta_stamp(home) is None  # compacted into a rebuilt base
    assert_exact(home, src)
    w.quiet_tasks(t0 + 6)
    w.quiet_tasks(t0 + 60)
    assert promoted == [1]  # once per quiet period, not per save nor per tick
    (src / "json" / "extra.py").write_text("def save_again():\n    pass\n")
    w._last_event = time.monotonic()
    w._apply(None)
    w.quiet_tasks(w._last_event + 6)
    assert promoted == [1, 1]


def test_a_burst_past_the_bound_is_searchable_as_a_delta_and_folded_on_the_next_quiet_tick(
    live, json_tree, monkeypatch
):
    """A burst past COMPACT_ABOVE is written as a delta (the base's rebuild grows with the index and would
    stand between the burst and searchable), and the watcher's first quiet tick folds it; one past
    DEFER_FOLD_UP_TO still rebuilds the base in the update."""
    monkeypatch.setattr(lexical_delta, "COMPACT_ABOVE", 5)
    monkeypatch.setattr(lexical_delta, "DEFER_FOLD_UP_TO", 40)
    home = live.settings.home
    burst = json_tree / "json" / "burst"
    burst.mkdir()
    for i in range(10):
        (burst / f"m{i}.py").write_text(f"def burst_function_{i}():\n    return {i}\n")
    report = live.update()
    assert report.lexical.startswith("delta (+") and live.fold_when_quiet
    assert lexical_delta.delta_stamp(home) is not None
    assert_exact(home, json_tree)
    w = Watcher(live, lambda r: None, compact_after_s=3600)
    w._apply(None)  # nothing changed since: the fold is still due
    w._compacted, w._last_event = False, time.monotonic()
    w.quiet_tasks()  # one quiet second, not compact_after_s
    assert lexical_delta.delta_stamp(home) is None and not live.fold_when_quiet
    assert_exact(home, json_tree)
    for i in range(60):  # past DEFER_FOLD_UP_TO: the update rebuilds the base itself
        (burst / f"n{i}.py").write_text(f"def second_burst_{i}():\n    return {i}\n")
    report = live.update()
    assert report.lexical == "rebuilt" and not live.fold_when_quiet
    assert lexical_delta.delta_stamp(home) is None
    assert_exact(home, json_tree)


def test_a_burst_of_file_events_coalesces_into_a_few_updates(live, json_tree):
    reports = []
    w = Watcher(live, reports.append, settle_ms=30)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    assert w.ready.wait(60)
    burst = json_tree / "json" / "burst"
    burst.mkdir()
    for i in range(40):
        (burst / f"m{i}.py").write_text(f"def burst_function_{i}():\n    return {i}\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(r.files.get("added", 0) for r in reports) < 40:
        time.sleep(0.1)
    w.stop()
    t.join(10)
    updates = [r for r in reports if r.kind == "update"]
    assert sum(r.files.get("added", 0) for r in updates) == 40
    assert len(updates) <= 6, [r.files for r in updates]  # not one per file
    assert_exact(live.settings.home, json_tree)


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from nova_pipeline_tests.conftest import FakeEmbedder
    from nova_pipeline.core.live.updater import LiveIndex
    from nova_pipeline.core.settings import Settings

    class Slow(FakeEmbedder):
        def embed(self, texts):
            time.sleep(0.2)
            return super().embed(texts)

    import nova_pipeline.core.live.updater as u
    u.DEFAULT_BATCH = 8  # small batches: the kill lands between committed ones
    li = LiveIndex(Settings.build({src!r}, {home!r}), Slow())
    li.catch_up()
    print("ready", flush=True)
    sys.stdin.readline()  # the parent has written the new files
    li.update()
    print("done", flush=True)
    """
)


def test_kill_9_mid_update_then_a_restart_embeds_nothing_twice_and_is_exact(json_tree, tmp_path):
    src, home = json_tree, tmp_path / "home"
    build_home(src, home)
    cache = EmbeddingCache(home, FP)
    cached_before = cache._db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    cache.close()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(repo=str(REPO_ROOT), src=str(src), home=str(home))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert child.stdout.readline().strip() == "ready"
    new = src / "json" / "many"
    new.mkdir()
    for i in range(60):
        (new / f"f{i}.py").write_text(f"def generated_{i}(x):\n    return x * {i} + {i * 7}\n")
    child.stdin.write("go\n")
    child.stdin.flush()
    time.sleep(0.9)  # 8 batches of 8 at 0.2 s each: a few are committed, the rest are not
    child.send_signal(signal.SIGKILL)
    child.wait()
    cache = EmbeddingCache(home, FP)
    committed = cache._db.execute("SELECT count(*) FROM vectors").fetchone()[0] - cached_before
    cache.close()
    counting = FakeEmbedder()
    li = LiveIndex(Settings.build(src, home), counting)
    r = li.catch_up()
    li.close()
    assert 0 < committed < 60  # killed mid-update
    assert counting.texts == 60 - committed and r.embedded == 60 - committed  # nothing embedded twice
    assert_exact(home, src)


def test_a_save_updates_the_code_graph_when_a_rebuild_made_one(live, json_tree):
    from nova_pipeline.core.index import graph
    from nova_pipeline_tests.service.test_mcp import write_graph

    home = live.settings.home
    assert live.update().kind == "unchanged" and not graph.load_or_none(home)  # no graph: nothing to update
    write_graph(json_tree, home)
    decoder = json_tree / "json" / "decoder.py"
    decoder.write_text(decoder.read_text() + "\n\ndef live_graph_probe(s):\n    return py_scanstring(s, 0)\n")
    r = live.update()
    assert r.kind == "update" and "graph" in r.phases
    _, sites = graph.load(home).query("callers", "json.decoder.py_scanstring")
    assert "json.decoder.live_graph_probe" in {s["source"] for s in sites}
    # the tables say which inputs made them, as code_graph computes it from the tables: a rebuild after the
    # save finds the graph current
    spans = graph.chunk_spans_digest(read_table(home, SOURCE_CHUNKS, graph.SPAN_COLUMNS))
    assert graph.kept_attrs(home)["inputs_digest"] == graph.inputs_digest(
        json_tree, read_table(home, SOURCE_FILES), spans
    )

    # the watcher defers the graph to a quiet tick: a save does not wait for it
    watcher = Watcher(live, lambda r: None)
    decoder.write_text(
        decoder.read_text() + "\n\ndef deferred_graph_probe(s):\n    return py_scanstring(s, 0)\n"
    )
    r = live.update()
    assert r.kind == "update" and "graph" not in r.phases and live.graph_pending

    def callers():
        return {s["source"] for s in graph.load(home).query("callers", "json.decoder.py_scanstring")[1]}

    assert "json.decoder.deferred_graph_probe" not in callers()
    watcher.quiet_tasks()
    assert "json.decoder.deferred_graph_probe" in callers() and not live.graph_pending


def test_a_model_switch_is_followed_by_the_next_update(json_tree, tmp_path):
    """``nova watch`` writes into the active model's collection: after the pointer changes, its next update
    catches the new model's collection up (embedding with the new model) and later saves go there."""
    import json as json_mod

    from nova_pipeline.core.layout import Layout

    home = tmp_path / "home"
    build_home(json_tree, home)
    models = {"": FakeEmbedder(), "other": FakeEmbedder(trim=True)}  # two fingerprints

    def active():
        path = Layout.of(home).home / "models" / "active.json"
        return models[json_mod.loads(path.read_text())["model_dir"] if path.exists() else ""]

    li = LiveIndex(Settings.build(json_tree, home), active(), make_embedder=active)
    try:
        assert li.catch_up().embedded == 0
        pointer = Layout.of(home).home / "models" / "active.json"
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json_mod.dumps({"model_dir": "other"}))  # what nova model switch writes, in short
        decoder = json_tree / "json" / "decoder.py"
        decoder.write_text(decoder.read_text() + "\n\ndef switched_model_helper():\n    return 1\n")
        r = li.update()
        want = clean_ids(json_tree)
        assert r.kind == "catch-up" and li.embedder is models["other"]
        assert r.embedded == models["other"].texts > 0  # every text, once, by the new model
        with fresh_client(home) as client:
            assert existing_ids(get_collection(client, models["other"].fingerprint)) == want
            assert existing_ids(get_collection(client, FP)) != want  # the old model's: left as it was
    finally:
        li.close()

import dagster as dg
import pytest

from nova_pipeline.core.errors import FailoverError
from nova_pipeline.core.index.vector_store import existing_ids, get_collection, open_client, open_client_at
from nova_pipeline.core.keys import SOURCE_CHUNKS
from nova_pipeline.core.serving import failover
from nova_pipeline.core.serving import journal as journal_mod
from nova_pipeline.core.serving.estimate import CHROMA_FIXED_BYTES, CHROMA_MEMORY_FACTOR, estimate
from nova_pipeline.core.serving.failover import activate_backup, fail_back
from nova_pipeline.core.serving.journal import Journal
from nova_pipeline.core.serving.pointer import BACKUP, PRIMARY, read_state
from nova_pipeline.core.tables import read_table
from nova_pipeline_tests.conftest import FakeEmbedder, materialize_rebuild

FP = FakeEmbedder.fingerprint
GB = 2**30


def test_zones_and_where_a_backup_can_live():
    small = estimate(2_000, 6_000_000, available_bytes=8 * GB)  # 3,000 export bytes (ids, vectors) per chunk
    assert (small.zone, small.choice) == ("green", "memory")
    assert small.bytes_per_chunk == 3000 * CHROMA_MEMORY_FACTOR
    assert small.estimate_bytes == int(CHROMA_MEMORY_FACTOR * 6_000_000) + CHROMA_FIXED_BYTES
    assert small.required_bytes == 2 * small.estimate_bytes + 500 * 2**20  # the seed's buffer
    assert estimate(200_000, 200_000 * 3000, available_bytes=8 * GB).zone == "yellow"
    red = estimate(600_000, 600_000 * 3000, available_bytes=64 * GB, max_memory_mb=10**6)
    assert (red.zone, red.choice) == ("red", "disk")
    starved = estimate(2_000, 6_000_000, available_bytes=100 * 2**20)  # 100 MB free: under the 500 MB buffer
    assert starved.choice == "disk" and "available" in starved.message
    capped = estimate(50_000, 50_000 * 3000, available_bytes=64 * GB, max_memory_mb=100)
    assert capped.choice == "disk" and "max_memory_mb=100" in capped.message
    refused = estimate(2_000, 6_000_000, available_bytes=100 * 2**20, disk_copy=False)
    assert refused.choice == "refuse"
    assert refused.message.startswith(
        "BACKUP ACTIVATION FAILED - Insufficient memory. Required: 0.57GB, Available: 0.10GB"
    )


def test_the_journal_is_written_ahead_and_replays_idempotently(tmp_path, fake_embedder):
    target = get_collection(open_client_at(tmp_path / "target"), FP)
    journal = Journal(tmp_path)
    col = journal_mod.JournalingCollection(get_collection(open_client_at(tmp_path / "src"), FP), journal)
    vecs = fake_embedder.embed(["a", "b", "c"])
    col.upsert(ids=["1", "2", "3"], embeddings=vecs, documents=["a", "b", "c"], metadatas=[{"path": "x"}] * 3)
    col.delete(ids=["2"])
    assert [(seq, op, t.num_rows) for seq, op, t in journal.entries()] == [(1, "upsert", 3), (2, "delete", 1)]

    def failing_upsert(**kw):
        raise OSError("the backup store failed")

    col._collection.upsert = failing_upsert
    with pytest.raises(OSError):
        col.upsert(ids=["4"], embeddings=vecs[:1], documents=["d"], metadatas=[{"path": "y"}])
    assert journal.summary() == {"upserts": 4, "deletes": 1, "entries": 3}  # logged before the write failed
    assert journal.replay(target) == (4, 1)
    assert journal.replay(target) == (4, 1) and existing_ids(target) == {"1", "3", "4"}  # twice: same state


def test_activation_needs_a_golden_copy(tmp_path):
    with pytest.raises(FailoverError, match="no golden copy"):
        activate_backup(tmp_path, failover.FailoverSettings(), "test", "tester")
    assert read_state(tmp_path).active == PRIMARY


def test_a_rebuild_while_failed_over_is_journaled_and_fails_back_exactly(json_tree, tmp_path):
    home = tmp_path / "home"
    fake = FakeEmbedder()
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
        before = read_table(home, SOURCE_CHUNKS)
        entry = activate_backup(
            home, failover.FailoverSettings(), "test: primary down", "tester", available_bytes=100 * 2**20
        )
        state = read_state(home)
        assert state.active == BACKUP and state.backup_kind == "disk" and entry["outcome"] == "ok"
        primary_ids = existing_ids(get_collection(open_client(home), FP, create=False))

        pkg = json_tree / "json"
        for name in ("decoder.py", "encoder.py", "scanner.py"):
            (pkg / name).write_text(
                (pkg / name).read_text() + f"\n\ndef added_to_{name[:-3]}():\n    return 1\n"
            )
        (pkg / "tool.py").unlink()
        from nova_pipeline.defs.resources import EmbedderResource

        class Counting(EmbedderResource):
            def get_embedder(self):
                return fake

            def fingerprint(self):
                return FP

        during = materialize_rebuild(json_tree, home, instance, embedder=Counting())
        assert during.success
    after = read_table(home, SOURCE_CHUNKS)
    added = set(after["chunk_id"]) - set(before["chunk_id"])
    removed = set(before["chunk_id"]) - set(after["chunk_id"])
    journaled_up, journaled_del = set(), set()
    for _, op, t in Journal(home).entries():
        (journaled_up if op == "upsert" else journaled_del).update(t.column("id").to_pylist())
    assert (journaled_up, journaled_del) == (added, removed)  # exactly those changes
    assert existing_ids(get_collection(open_client(home), FP, create=False)) == primary_ids  # untouched
    new_texts = set(after["content_blake3"]) - set(before["content_blake3"])
    assert fake.texts == len(new_texts)  # embedded once, during the failover

    entry = fail_back(home, None, FP, after, "tester")
    assert entry["outcome"] == "ok" and entry["details"]["repaired_from_cache"] == 0
    assert existing_ids(get_collection(open_client(home), FP, create=False)) == set(after["chunk_id"])
    assert fake.texts == len(new_texts)  # nothing embedded again
    assert read_state(home).active == PRIMARY and not Journal(home).dir.exists()
    clean = tmp_path / "clean"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, clean, instance).success
    assert existing_ids(get_collection(open_client(clean), FP, create=False)) == set(after["chunk_id"])


@pytest.mark.integration
def test_a_primary_that_comes_back_empty_is_refilled_without_embedding(json_tree, tmp_path):
    from nova_pipeline_tests.conftest import free_port, start_chroma, stop

    home, port = tmp_path / "home", free_port()
    url, server = start_chroma(tmp_path / "data-1", tmp_path / "chroma.log", port)
    try:
        with dg.instance_for_test() as instance:
            from nova_pipeline_tests.conftest import rebuild_graph, resources_for

            def build():
                return dg.materialize(
                    rebuild_graph(),
                    resources=resources_for(json_tree, home, chroma_url=url),
                    instance=instance,
                )

            assert build().success
            activate_backup(home, failover.FailoverSettings(), "test", "tester")
            (json_tree / "json" / "tool.py").unlink()
            assert build().success  # written to the backup store and journaled
        stop(server)
        url, server = start_chroma(tmp_path / "data-2", tmp_path / "chroma.log", port)  # a new, empty server
        chunks = read_table(home, SOURCE_CHUNKS)
        entry = fail_back(home, url, FP, chunks, "tester")
        assert entry["details"]["refilled_from_golden"] > 0
        assert existing_ids(get_collection(open_client(home, url), FP, create=False)) == set(
            chunks["chunk_id"]
        )
    finally:
        stop(server)


def test_search_follows_the_pointer_and_says_which_store_answered(json_tree, tmp_path):
    from nova_pipeline.core.serving.search_api import search
    from nova_pipeline.core.settings import Settings

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
    settings = Settings.build(None, home, require_source=False)
    fake = FakeEmbedder()
    first = search("decode JSON", 3, settings, fake)
    assert {h.store for h in first} == {"primary"} and first[0].stale_as_of is None
    activate_backup(home, failover.FailoverSettings(), "test", "tester")
    during = search("decode JSON", 3, settings, fake)
    cur = read_state(home).backup_created_at
    assert {h.store for h in during} == {"backup"} and {h.stale_as_of for h in during} == {cur}
    assert [h.chunk_id for h in during] == [h.chunk_id for h in first]


def test_a_writer_that_waited_through_a_failback_writes_to_the_primary_not_the_journal(tmp_path):
    """The flip and the journal's clearing happen under the writer lock, and a writer reads the pointer
    after it has the lock: nothing can land in the journal after its replay."""
    import threading

    from nova_pipeline.core.locks import writer_lock
    from nova_pipeline.core.serving.failover import writing_to
    from nova_pipeline.core.serving.pointer import update_state

    update_state(tmp_path, lambda s: setattr(s, "active", BACKUP))
    (tmp_path / "runtime" / "vectors").mkdir(parents=True)
    labels = []

    def writer():
        with writing_to(tmp_path, None) as store:  # waits: the failback below holds the lock
            labels.append((store.label, store.journal is not None))

    with writer_lock(tmp_path):  # the failback, between its replay and its end
        t = threading.Thread(target=writer)
        t.start()
        t.join(0.5)
        assert t.is_alive() and labels == []
        update_state(tmp_path, lambda s: setattr(s, "active", PRIMARY))  # its flip, under the same lock
        Journal(tmp_path).clear()
    t.join(30)
    assert labels == [(PRIMARY, False)]  # read after the lock: the primary, unjournaled
    assert not Journal(tmp_path).dir.exists()


def test_the_runtime_copy_is_written_under_the_writer_lock(json_tree, tmp_path, monkeypatch):
    from nova_pipeline.core.layout import Layout
    from nova_pipeline.core.locks import held
    from nova_pipeline.core.protect import golden
    from nova_pipeline.core.protect.golden import runtime as runtime_mod
    from nova_pipeline_tests.conftest import build_home

    build_home(json_tree, tmp_path)
    golden.promote(tmp_path, FP)
    seen = []
    real = runtime_mod.import_export

    def spy(col, path):
        seen.append(held(Layout(tmp_path).vectors_lock))
        return real(col, path)

    monkeypatch.setattr(runtime_mod, "import_export", spy)
    golden.make_runtime_copy(tmp_path)
    assert seen == [True]

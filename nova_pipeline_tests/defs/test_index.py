"""The semantic index with the real all-MiniLM-L6-v2 model and real Chroma."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import dagster as dg
import pytest

import nova_pipeline
from nova_pipeline.core.errors import IndexNotBuiltError
from nova_pipeline.core.index.embedding import bundled_fingerprint
from nova_pipeline.core.index.vector_store import existing_ids, get_collection, open_client
from nova_pipeline.core.serving.search_api import search
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import read_table
from nova_pipeline.defs import ingest
from nova_pipeline.defs.index import chunks, vectors
from nova_pipeline.defs.resources import EmbedderResource
from nova_pipeline_tests.conftest import resources_for, run_dagster_cli

pytestmark = pytest.mark.integration

ASSETS = [ingest.source_files, chunks.source_chunks, vectors.vector_index, chunks.lexical_index]


def build(src, home, instance, batch_size=64):
    return dg.materialize(
        ASSETS,
        resources=resources_for(src, home, EmbedderResource()),
        instance=instance,
        run_config={"ops": {"vector_index": {"config": {"batch_size": batch_size}}}},
    )


def md(result):
    return {
        k: v.value for k, v in result.asset_materializations_for_node("vector_index")[-1].metadata.items()
    }


def collection_state(home):
    col = get_collection(open_client(home), bundled_fingerprint(), create=False)
    got = col.get(include=["documents"])
    return col.count(), dict(zip(got["ids"], got["documents"]))


def test_incremental_edit_delete_add_then_search(json_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        first = build(json_tree, home, instance)
        assert first.success
        m1 = md(first)
        chunks1 = read_table(home, "source_chunks")
        assert m1["embedded"] == chunks1["content_blake3"].nunique() and m1["vectors"] == len(chunks1)
        assert all(e.passed for e in first.get_asset_check_evaluations())

        unchanged = build(json_tree, home, instance)
        assert md(unchanged)["embedded"] == 0 and md(unchanged)["upserted"] == 0

        pkg = json_tree / "json"
        (pkg / "decoder.py").write_text(
            (pkg / "decoder.py").read_text() + "\n\ndef decode_twice(s):\n    return loads(loads(s))\n"
        )
        os.unlink(pkg / "tool.py")
        (pkg / "extra.py").write_text(
            'def dumps_sorted(obj):\n    """Serialize with sorted keys."""\n'
            "    return dumps(obj, sort_keys=True)\n"
        )
        again = build(json_tree, home, instance)
        chunks2 = read_table(home, "source_chunks")
        new_texts = set(chunks2["content_blake3"]) - set(chunks1["content_blake3"])
        m = md(again)
        assert m["embedded"] == len(new_texts) <= 3  # only the text that is new: the edited tail and extra.py
        assert m["deleted"] == len(set(chunks1["chunk_id"]) - set(chunks2["chunk_id"]))
        ids = existing_ids(get_collection(open_client(home), bundled_fingerprint(), create=False))
        assert ids == set(chunks2["chunk_id"])
        assert not any(p.startswith("json/tool.py") for p in chunks2["path"])
        assert all(e.passed for e in again.get_asset_check_evaluations())

    hits = search(
        "serialize an object with its keys sorted",
        k=3,
        settings=Settings.build(None, home, require_source=False),
    )
    assert hits[0].path == "json/extra.py" and hits[0].symbol == "def dumps_sorted"
    assert hits[0].vector_score > 0.5 and hits[0].lexical_score > 0 and "sort" in hits[0].matched_terms
    # the package-level API reads the same settings from the environment, and takes the same mode and filters
    os.environ["NOVA_HOME"] = str(home)
    try:
        api_hits = nova_pipeline.search("serialize an object with its keys sorted", 2)
        lexical_hits = nova_pipeline.search("decode twice", 3, mode="lexical", path="json/decoder.py")
        with pytest.raises(ValueError, match="mode"):
            nova_pipeline.search("dumps_sorted", 3, mode="fuzzy")
    finally:
        del os.environ["NOVA_HOME"]
    assert [h.chunk_id for h in api_hits] == [h.chunk_id for h in hits[:2]]
    assert "def decode_twice" in lexical_hits[0].symbol  # merged with its small neighbour
    assert all(h.path == "json/decoder.py" and h.vector_score is None for h in lexical_hits)


def test_search_before_the_first_build_says_to_run_rebuild(tmp_path):
    with pytest.raises(IndexNotBuiltError, match="rebuild"):
        search("anything", settings=Settings.build(None, tmp_path / "empty", require_source=False))
    assert not (tmp_path / "empty" / "vectors").exists()  # a search writes nothing, not even an empty store
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")}
    env["NOVA_HOME"] = str(tmp_path / "empty")
    proc = subprocess.run(
        [sys.executable, "-m", "nova_pipeline.cli", "search", "anything"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "run the rebuild job" in proc.stderr.replace("\n", " ")


def test_killed_run_resumes_with_at_most_one_batch_redone(json_tree, tmp_path):
    home, dhome = tmp_path / "home", tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  vector_index:\n    config:\n      batch_size: 8\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))},
        "NOVA_SOURCE_DIR": str(json_tree),
        "NOVA_HOME": str(home),
        "DAGSTER_HOME": str(dhome),
    }
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        "nova_pipeline.definitions",
        "-j",
        "rebuild",
        "-c",
        str(config),
    ]
    cache_db = home / "cache" / "embeddings" / f"{bundled_fingerprint()}.sqlite3"

    def cached() -> int:
        try:
            with sqlite3.connect(cache_db, timeout=5) as db:
                return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        except sqlite3.Error:
            return 0

    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while cached() < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its step processes, mid-embedding
    proc.wait()
    committed = cached()
    chunks = read_table(home, "source_chunks")
    unique = chunks["content_blake3"].nunique()
    assert 8 <= committed < unique, "the kill must land during embedding"

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        ev = instance.get_latest_materialization_event(dg.AssetKey("vector_index"))
        meta = {k: v.value for k, v in ev.asset_materialization.metadata.items()}
    # nothing committed before the kill is embedded again; only the batch in flight was lost
    assert meta["embedded"] == unique - committed
    assert cached() == unique
    count, docs = collection_state(home)

    clean_home = tmp_path / "clean"
    with dg.instance_for_test() as instance:
        assert build(json_tree, clean_home, instance).success
    clean_count, clean_docs = collection_state(clean_home)
    assert count == clean_count == len(chunks)
    assert docs == clean_docs


def test_nova_resume_reexecutes_from_failure(json_tree, tmp_path):
    home, dhome = tmp_path / "home", tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {"NOVA_SOURCE_DIR": str(json_tree), "NOVA_HOME": str(home), "DAGSTER_HOME": str(dhome)}
    failed = run_dagster_cli(
        ["job", "execute", "-m", "nova_pipeline.definitions", "-j", "rebuild"],
        {**env, "NOVA_CHROMA_URL": "http://127.0.0.1:9"},
        tmp_path,
    )
    assert failed.returncode != 0
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        run = instance.get_runs()[0]
        assert run.is_failure
        run_id = run.run_id
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}, **env}
    resumed = subprocess.run(
        [sys.executable, "-m", "nova_pipeline.cli", "resume", run_id],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        latest = instance.get_runs()[0]
        assert latest.is_success and latest.parent_run_id == run_id
        mats = instance.get_records_for_run(latest.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        keys = {r.event_log_entry.dagster_event.asset_key.to_user_string() for r in mats.records}
        # the steps that succeeded before were not run again: only the failed one and what depends on it
        assert keys == {"vector_index", "golden_copy"}


def test_sliced_index_equals_the_one_slice_index_and_sweeps_what_no_slice_owns(json_tree, tmp_path):
    """vector_index split into slices (fake embedder) builds the same collection as one slice; each slice
    deletes its own stale vectors; a vector no slice owns (written before buckets) goes in the final step."""

    def run(home, slices, instance):
        result = dg.materialize(
            ASSETS,
            resources=resources_for(json_tree, home),
            instance=instance,
            run_config={"ops": {"vector_index": {"config": {"slices": slices}}}},
        )
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        return md(result)

    def state(home):
        col = get_collection(open_client(home), "fake-embedder-v1", create=False)
        got = col.get(include=["documents", "metadatas"])
        return col, {i: (d, m["bucket"]) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}

    with dg.instance_for_test() as instance:
        m3 = run(tmp_path / "three", 3, instance)
        m1 = run(tmp_path / "one", 1, instance)
        assert (m3["slices"], m1["slices"]) == (3, 1) and m3["vectors"] == m1["vectors"] == m3["upserted"]
        assert state(tmp_path / "three")[1] == state(tmp_path / "one")[1]
        steps = {
            e.step_key
            for e in instance.all_logs(
                instance.get_runs()[1].run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
            )
        }
        assert {f"vector_index.reconcile_vector_slice[slice_{i}]" for i in range(3)} <= steps

        os.unlink(json_tree / "json" / "tool.py")
        col, before = state(tmp_path / "three")
        col.upsert(ids=["f" * 32], embeddings=[[0.1] * 384], documents=["orphan"], metadatas=[{"path": "x"}])
        m2 = run(tmp_path / "three", 2, instance)
        chunks = read_table(tmp_path / "three", "source_chunks")
        gone = set(before) - set(chunks["chunk_id"])
        assert gone and m2["deleted"] == len(gone) + 1 and m2["upserted"] == 0
        assert set(state(tmp_path / "three")[1]) == set(chunks["chunk_id"]) == set(before) - gone

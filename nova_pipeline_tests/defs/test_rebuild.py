"""The whole rebuild graph, twice and against an empty tree: the warm path and the mass-deletion guard."""

import shutil

import dagster as dg
import pandas as pd
import pytest

from nova_pipeline.core.errors import MassDeletionError
from nova_pipeline.core.index.vector_store import get_collection, open_client
from nova_pipeline.core.keys import SOURCE_CHUNKS
from nova_pipeline.core.protect import golden
from nova_pipeline.core.tables import identity, read_table, write_table
from nova_pipeline_tests.conftest import FakeEmbedder, asset_metadata, materialize_rebuild

ALLOW = {"resources": {"guard": {"config": {"allow_mass_delete": True}}}}


def test_an_unchanged_rebuild_promotes_no_golden_version(json_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        built = materialize_rebuild(json_tree, home, instance)
        assert built.success
        first = golden.current_version(home)
        again = materialize_rebuild(json_tree, home, instance)
    assert again.success
    # the first runtime copy is a file copy of the embedded primary, not a second build of its HNSW graph
    built_md = asset_metadata(built, "golden_copy")
    assert built_md["runtime_copy_seeded"] is True and built_md["runtime_copy_upserted"] == 0
    md = asset_metadata(again, "golden_copy")
    assert md["promoted"] is False and md["reason"] == f"unchanged: CURRENT {first.name} still matches"
    assert md["bytes_written"] == 0 and md["version"] == first.name
    assert [v.name for v in golden.list_versions(home)] == [first.name]
    check = {e.check_name: e for e in again.get_asset_check_evaluations()}["golden_copy_verifies"]
    assert check.passed and check.metadata["verified"].value == "by promote"  # not read a second time


def test_a_damaged_current_is_not_passed_on_promote_s_word(json_tree, tmp_path):
    """CURRENT damaged on disk: promote does not reuse it, promotes a fresh version, and the check reads the
    new CURRENT for real."""
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
        first = golden.current_version(home)
        victim = first.path / "model.json"
        victim.chmod(0o644)
        victim.write_bytes(victim.read_bytes() + b" ")
        again = materialize_rebuild(json_tree, home, instance)
    assert again.success
    md = asset_metadata(again, "golden_copy")
    assert md["promoted"] is True and md["version"] != first.name
    check = {e.check_name: e for e in again.get_asset_check_evaluations()}["golden_copy_verifies"]
    assert check.passed and check.metadata["verified"].value == "now"
    assert check.metadata["version"].value == md["version"]


def test_an_empty_source_dir_fails_at_the_guard_and_the_override_empties_on_purpose(json_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
        collection = get_collection(open_client(home), FakeEmbedder.fingerprint, create=False)
        count, current = collection.count(), golden.current_version(home).name
        assert count > 0
        shutil.rmtree(json_tree / "json")  # the volume is "unmounted": an empty directory
        refused = materialize_rebuild(json_tree, home, instance, raise_on_error=False)
        assert not refused.success
        failure = next(e for e in refused.all_node_events if e.is_step_failure)
        assert failure.step_key == "source_files"
        assert "MassDeletionError" in str(failure.event_specific_data.error) and "allow_mass_delete" in str(
            failure.event_specific_data.error
        )
        assert collection.count() == count and golden.current_version(home).name == current
        # the same through the guard's own error, raised in-process
        with pytest.raises(MassDeletionError, match=r"delete \d+ of \d+ \(100%"):
            materialize_rebuild(json_tree, home, instance)

        emptied = materialize_rebuild(json_tree, home, instance, run_config=ALLOW)
    assert emptied.success, emptied
    assert get_collection(open_client(home), FakeEmbedder.fingerprint, create=False).count() == 0
    now = golden.current_version(home)
    assert now.name != current and now.count == 0
    assert asset_metadata(emptied, "source_files")["files_lost"] > 0


def test_a_missing_source_dir_fails_at_the_guard(json_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
        current = golden.current_version(home).name
        shutil.rmtree(json_tree)
        with pytest.raises(MassDeletionError, match="is missing"):
            materialize_rebuild(json_tree, home, instance)
    assert golden.current_version(home).name == current


def snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_plan_predicts_the_next_build_and_writes_nothing(json_tree, tmp_path):
    from nova_pipeline.core.serving.plan import make_plan
    from nova_pipeline.core.settings import Settings

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
        settings = Settings.build(json_tree, home)
        unchanged = make_plan(settings, fingerprint=FakeEmbedder.fingerprint)
        assert unchanged.files == {"added": 0, "changed": 0, "unchanged": 5, "deleted": 0}
        assert (unchanged.chunks_to_upsert, unchanged.texts_to_embed, unchanged.vectors_to_delete) == (
            0,
            0,
            0,
        )
        assert unchanged.golden.startswith("no new version") and not unchanged.refused

        pkg = json_tree / "json"
        (pkg / "decoder.py").write_text(
            (pkg / "decoder.py").read_text() + "\n\ndef twice(s):\n    return s * 2\n"
        )
        (pkg / "tool.py").unlink()
        (pkg / "extra.py").write_text("def extra():\n    return 42\n")
        before = snapshot(home)
        p = make_plan(settings, fingerprint=FakeEmbedder.fingerprint)
        assert snapshot(home) == before  # a dry run writes nothing
        assert (p.files["added"], p.files["changed"], p.files["deleted"]) == (1, 1, 1)
        assert p.examples["deleted"] == ["json/tool.py"] and p.golden.startswith("a new golden version")

        built = materialize_rebuild(json_tree, home, instance)
    vmd = asset_metadata(built, "vector_index")
    assert (p.chunks_to_upsert, p.texts_to_embed, p.vectors_to_delete, p.chunks) == (
        vmd["upserted"],
        vmd["embedded"],
        vmd["deleted"],
        vmd["chunks"],
    )
    assert asset_metadata(built, "golden_copy")["promoted"] is True


def test_plan_lists_the_guard_refusal_for_an_empty_tree(json_tree, tmp_path):
    from nova_pipeline.core.serving.plan import make_plan
    from nova_pipeline.core.settings import Settings

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
    shutil.rmtree(json_tree / "json")
    p = make_plan(Settings.build(json_tree, home), fingerprint=FakeEmbedder.fingerprint)
    assert p.refused and "source_files" in p.refusals[0] and p.files["deleted"] > 0


def test_an_unchanged_run_keeps_the_chunk_table_unread_until_another_writer_or_an_edit_changes_it(
    json_tree, tmp_path
):
    home = tmp_path / "home"

    def chunks_md(result):
        return asset_metadata(result, "source_chunks")

    def table():
        return read_table(home, SOURCE_CHUNKS).sort_values("chunk_id", ignore_index=True)

    with dg.instance_for_test() as instance:
        assert chunks_md(materialize_rebuild(json_tree, home, instance))["unchanged"] is False
        made, written = table(), identity(home, SOURCE_CHUNKS)
        md = chunks_md(materialize_rebuild(json_tree, home, instance))
        assert md["unchanged"] is True and md["files_chunked"] == 0 and md["files_reused"] == 5
        assert identity(home, SOURCE_CHUNKS) == written  # not written again
        # another writer replaced the table, one file's chunks lost: not the version this asset wrote
        write_table(home, SOURCE_CHUNKS, made[made["path"] != "json/decoder.py"])
        md = chunks_md(materialize_rebuild(json_tree, home, instance))
        assert md["unchanged"] is False and md["files_chunked"] == 1
        pd.testing.assert_frame_equal(table(), made)
        decoder = json_tree / "json" / "decoder.py"
        decoder.write_text(decoder.read_text() + "\n\ndef unread_table_probe():\n    return 1\n")
        md = chunks_md(materialize_rebuild(json_tree, home, instance))
        assert md["unchanged"] is False and md["files_chunked"] == 1
        assert table()["symbol"].str.contains("unread_table_probe").any()


def test_an_unchanged_run_skips_chroma_until_something_writes_to_it(json_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        first = materialize_rebuild(json_tree, home, instance)
        assert asset_metadata(first, "vector_index")["verified"].startswith("reconciled")
        again = materialize_rebuild(json_tree, home, instance)
        assert asset_metadata(again, "vector_index")["verified"].startswith("unchanged since verified in run")
        checks = {e.check_name: e for e in again.get_asset_check_evaluations()}
        assert all(checks[c].passed for c in ("vector_count_matches_chunks", "chunks_find_themselves"))
        assert checks["chunks_find_themselves"].metadata["verified"].value.startswith("unchanged since")
        # outside damage: a vector deleted behind the pipeline's back is a write; the next run repairs it
        col = get_collection(open_client(home), FakeEmbedder.fingerprint, create=False)
        lost = col.get(limit=1)["ids"]
        col.delete(ids=lost)
        repaired = materialize_rebuild(json_tree, home, instance)
    md = asset_metadata(repaired, "vector_index")
    assert md["verified"].startswith("reconciled") and md["upserted"] == 1 and md["embedded"] == 0
    assert (
        get_collection(open_client(home), FakeEmbedder.fingerprint, create=False).get(ids=lost)["ids"] == lost
    )


def test_the_vector_checks_fail_naming_the_chunk_and_block_the_golden_copy(json_tree, tmp_path):
    """Damage the reconcile cannot see (a chunk's entry holding another chunk's embedding) fails
    chunks_find_themselves inside vector_index's step, and golden_copy does not run; a deleted vector, which
    reconcile can see, is repaired in the same run, so the count check passes."""
    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import read_table

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
        before = golden.current_version(home).name
        chunks = read_table(home, SOURCE_CHUNKS)
        col = get_collection(open_client(home), FakeEmbedder.fingerprint, create=False)
        gone, wrong = chunks.iloc[3], chunks.iloc[7]
        col.delete(ids=[gone.chunk_id])
        other = col.get(ids=[chunks.iloc[20].chunk_id], include=["embeddings"])["embeddings"]
        col.update(ids=[wrong.chunk_id], embeddings=other)
        res = materialize_rebuild(
            json_tree,
            home,
            instance,
            raise_on_error=False,
            run_config={"ops": {"vector_index": {"config": {"self_retrieval_sample": len(chunks)}}}},
        )
    assert not res.success
    checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert checks["vector_count_matches_chunks"].passed
    assert asset_metadata(res, "vector_index")["upserted"] == 1
    assert not checks["chunks_find_themselves"].passed
    assert f"{wrong.path}:{wrong.start_line}-{wrong.end_line} ({wrong.chunk_id})" in (
        checks["chunks_find_themselves"].description
    )
    assert res.asset_materializations_for_node("golden_copy") == []
    assert golden.current_version(home).name == before


def test_count_failures_names_the_missing_chunk_and_the_extra_vector(json_tree, tmp_path):
    from nova_pipeline.core.index.verification import count_failures
    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import read_table

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
    chunks = read_table(home, SOURCE_CHUNKS)
    col = get_collection(open_client(home), FakeEmbedder.fingerprint, create=False)
    assert count_failures(col, chunks) == (len(chunks), 0, 0, [])
    gone = chunks.iloc[3]
    col.delete(ids=[gone.chunk_id])
    count, missing, extra, named = count_failures(col, chunks)
    assert (count, missing, extra) == (len(chunks) - 1, 1, 0)
    assert named == [f"{gone.path}:{gone.start_line}-{gone.end_line} ({gone.chunk_id}) has no vector"]
    count, missing, extra, named = count_failures(col, chunks.drop(index=chunks.index[5:7]))
    assert (count, missing, extra) == (len(chunks) - 1, 1, 2)
    assert f"vector {min(chunks.iloc[5].chunk_id, chunks.iloc[6].chunk_id)} is no chunk's" in named


def test_an_edits_reconcile_uses_the_recorded_ids_and_lists_the_collection_only_after_outside_writes(
    json_tree, tmp_path, monkeypatch
):
    """The last reconcile recorded the ids it left at the store's state; the next one, when nothing wrote
    since, starts from them instead of listing Chroma, and ends with exactly the chunks' ids."""
    from nova_pipeline.core.index import reconcile as reconcile_mod
    from nova_pipeline.core.index.vector_store import existing_ids
    from nova_pipeline.core.tables import read_table

    home = tmp_path / "home"
    listed = []
    real = reconcile_mod.existing_ids
    monkeypatch.setattr(reconcile_mod, "existing_ids", lambda col, *a: listed.append(1) or real(col, *a))
    with dg.instance_for_test() as instance:
        materialize_rebuild(json_tree, home, instance)
        assert listed == [1]  # the first build lists (an empty collection)
        p = sorted(json_tree.rglob("*.py"))[0]
        p.write_text(p.read_text() + "\n\ndef recorded_ids_probe():\n    return 1\n")
        edited = materialize_rebuild(json_tree, home, instance)
        assert listed == [1] and asset_metadata(edited, "vector_index")["upserted"] >= 1
        col = get_collection(open_client(home), FakeEmbedder.fingerprint, create=False)
        assert existing_ids(col) == set(read_table(home, "source_chunks")["chunk_id"])
        col.delete(ids=col.get(limit=1)["ids"])  # a write the record does not know
        p.write_text(p.read_text() + "\n\ndef recorded_ids_probe_2():\n    return 2\n")
        repaired = materialize_rebuild(json_tree, home, instance)
    assert listed == [1, 1] and asset_metadata(repaired, "vector_index")["upserted"] >= 2
    col = get_collection(open_client(home), FakeEmbedder.fingerprint, create=False)
    assert existing_ids(col) == set(read_table(home, "source_chunks")["chunk_id"])

import dagster as dg
import pytest

from nova_pipeline.core.protect import audit, backup, golden
from nova_pipeline.defs import protect
from nova_pipeline.defs.jobs import backup_job, rebuild_job, reset_index_job, restore_drill_job, restore_job
from nova_pipeline_tests.conftest import build_home, resources_for


@pytest.fixture
def home(json_tree, tmp_path):
    h = tmp_path / "home"
    build_home(json_tree, h)
    return h


def resources(h, src=None):
    return resources_for(src, h)


def test_golden_copy_and_backup_assets_with_their_checks(home):
    with dg.instance_for_test() as instance:
        res = dg.materialize(
            [
                protect.golden_copy,
                protect.backups,
                protect.backup_structure,
                protect.backup_full_read,
                protect.backup_restore_drill,
                dg.AssetSpec("source_chunks"),
            ],
            resources=resources(home),
            instance=instance,
            selection=dg.AssetSelection.groups("protect"),
        )
        assert res.success
        assert {e.check_name: e.passed for e in res.get_asset_check_evaluations()} == {
            "golden_copy_verifies": True,
            "backup_structure": True,
            "backup_full_read": True,
            "backup_restore_drill": True,
        }
        assert (home / "runtime" / "vectors").is_dir()
        version = res.asset_materializations_for_node("golden_copy")[0].metadata["version"].value
        assert golden.current_version(home).name == version
        assert len(backup.list_backups(home)) == 1


def test_reset_and_restore_jobs_need_confirm_and_are_audited(home):
    golden.promote(home, "fake-embedder-v1")
    b = backup.create_backup(home).info
    with dg.instance_for_test() as instance:
        refused = reset_index_job.execute_in_process(
            resources=resources(home), instance=instance, raise_on_error=False
        )
        assert not refused.success
        ok = reset_index_job.execute_in_process(
            resources=resources(home),
            instance=instance,
            run_config={"ops": {"reset_index_op": {"config": {"confirm": True}}}},
        )
        assert ok.success
        restored = restore_job.execute_in_process(
            resources=resources(home),
            instance=instance,
            run_config={"ops": {"restore_op": {"config": {"backup_id": b.id, "confirm": True}}}},
        )
        assert restored.success
        drill = restore_drill_job.execute_in_process(resources=resources(home), instance=instance)
        assert drill.success
    outcomes = [(r["action"], r["outcome"]) for r in audit.read(home)]
    assert outcomes[0] == ("reset_index", "refused: confirm is not true")
    assert ("reset_index", "ok") in outcomes and ("restore", "ok") in outcomes


def test_rebuild_ends_with_the_golden_copy_and_backup_is_its_own_job():
    from nova_pipeline.definitions import defs

    rebuild = defs.resolve_job_def(rebuild_job.name)
    keys = {k.to_user_string() for k in rebuild.asset_layer.executable_asset_keys}
    assert "golden_copy" in keys and "backups" not in keys
    assert {
        k.to_user_string() for k in defs.resolve_job_def(backup_job.name).asset_layer.executable_asset_keys
    } == {"backups"}
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {"nightly_rebuild", "daily_backup", "weekly_restore_drill"}
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in schedules.values())


def test_golden_copy_does_not_run_when_a_blocking_check_fails(home, json_tree):
    from nova_pipeline.core.compression.store import ContentStore
    from nova_pipeline.defs import compression, ingest

    store = ContentStore(home)
    path = store.object_path(store.index()["key"].iloc[0])
    raw = bytearray(open(path, "rb").read())
    raw[-1] ^= 0x20
    open(path, "wb").write(raw)
    with dg.instance_for_test() as instance:
        res = dg.materialize(
            [
                ingest.source_files,
                compression.compressed_store,
                protect.golden_copy,
                dg.AssetSpec("source_chunks"),
            ],
            resources=resources(home, json_tree),
            instance=instance,
            raise_on_error=False,
            selection=["compressed_store", "golden_copy"],
        )
        assert [e.passed for e in res.get_asset_check_evaluations()] == [False]
        assert res.asset_materializations_for_node("golden_copy") == []
    assert golden.current_version(home) is None

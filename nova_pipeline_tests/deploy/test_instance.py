"""The Dagster instance as nova sees it: its Postgres database, found from its config, dumped into backups."""

import json

import dagster as dg
import pytest

from nova_pipeline.core.protect import backup, golden
from nova_pipeline.defs import protect
from nova_pipeline.deploy.instance import postgres_url
from nova_pipeline_tests.cli.test_cli import nova
from nova_pipeline_tests.conftest import REPO_ROOT, FakeEmbedder, build_home, resources_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_home(tmp_path, pg_database, monkeypatch):
    """A DAGSTER_HOME with this project's dagster.postgres.yaml, DAGSTER_PG_* pointing at a fresh database."""
    dhome = tmp_path / "dagster_pg_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text((REPO_ROOT / "dagster.postgres.yaml").read_text())
    for k, v in pg_database.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DAGSTER_HOME", str(dhome))
    return dhome, pg_database


@pytest.fixture
def home(json_tree, tmp_path):
    h = tmp_path / "home"
    build_home(json_tree, h)
    golden.promote(h, FakeEmbedder.fingerprint)
    return h


def archive_manifest(b):
    with backup.open_archive(b.path) as tar:
        for ti in tar:
            if ti.name == backup.BACKUP_MANIFEST:
                return json.loads(tar.extractfile(ti).read())


def test_the_url_comes_from_the_instance_config(pg_home):
    dhome, pg = pg_home
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        assert postgres_url(instance) == (
            f"postgresql://{pg['DAGSTER_PG_USER']}@{pg['DAGSTER_PG_HOST']}:{pg['DAGSTER_PG_PORT']}/{pg['DAGSTER_PG_DB']}"
        )
    with dg.instance_for_test() as sqlite_instance:
        assert postgres_url(sqlite_instance) is None


def test_the_backup_asset_records_its_pg_dump(pg_home, home):
    dhome, _ = pg_home
    assets = [protect.backups, dg.AssetSpec("golden_copy")]
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        on_pg = dg.materialize(assets, resources=resources_for(None, home), instance=instance)
    with dg.instance_for_test() as instance:
        on_sqlite = dg.materialize(assets, resources=resources_for(None, home), instance=instance)
    meta = [
        r.asset_materializations_for_node("backups")[0].metadata["pg_dump"].value for r in (on_pg, on_sqlite)
    ]
    assert meta == ["included", "not configured"]
    newest, older = backup.list_backups(home)[:2]
    assert (
        archive_manifest(older)["pg_dump"] == "included"
        and archive_manifest(newest)["pg_dump"] == "not configured"
    )


def test_a_failed_pg_dump_is_recorded_and_the_rest_is_still_backed_up(home):
    r = backup.create_backup(home, "postgresql://postgres@127.0.0.1:5432/no_such_database_here")
    assert r.pg_dump.startswith("failed:") and "no_such_database_here" in r.pg_dump
    assert archive_manifest(r.info)["pg_dump"] == r.pg_dump
    assert backup.verify(home, r.info.id, 2) == []


def test_nova_backup_create_dumps_postgres_when_the_instance_uses_it(pg_home, home, tmp_path):
    dhome, pg = pg_home
    with dg.DagsterInstance.from_config(str(dhome)):
        pass  # the Dagster schema
    out = nova(["backup", "create"], {"NOVA_HOME": str(home), "DAGSTER_HOME": str(dhome), **pg}, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pg_dump: included" in out.stdout
    assert archive_manifest(backup.newest_backup(home))["pg_dump"] == "included"


def test_a_queued_run_says_when_no_daemon_will_start_it(tmp_path, monkeypatch):
    import time

    from dagster._daemon.types import DaemonHeartbeat

    from nova_pipeline.deploy.instance import QUEUED_RUN_DAEMON, launch_job, run_status

    dhome = tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())  # the queued coordinator
    monkeypatch.setenv("DAGSTER_HOME", str(dhome))
    monkeypatch.setenv("NOVA_HOME", str(tmp_path / "home"))
    run_id = launch_job("backup")  # as the admin API does; no daemon runs here, so it stays queued
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        found = run_status(instance, run_id)
        assert found["status"] == "QUEUED" and "dagster-daemon run" in found["waiting_for"]
        # a daemon that has just dequeued: the run waits for its turn, not for a daemon
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), QUEUED_RUN_DAEMON, "d-1", []))
        assert "waiting_for" not in run_status(instance, run_id)

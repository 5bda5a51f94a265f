import os
import subprocess
import sys

import dagster as dg
import pytest

from nova_pipeline.core.errors import SettingsError
from nova_pipeline.core.tables import read_table
from nova_pipeline.defs.ingest import source_files
from nova_pipeline_tests.conftest import REPO_ROOT, resources_for


def resources(src, home):
    return resources_for(src, home)


def meta(result, key):
    mats = result.asset_materializations_for_node("source_files")
    return mats[-1].metadata[key].value


def test_materialize_on_temp_tree(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("def f():\n    return 1\n")
    (src / "README.md").write_text("# hello\n")
    (src / "blob.bin").write_bytes(b"\0" * 100)
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        res = dg.materialize([source_files], resources=resources(src, home), instance=instance)
        assert res.success
        assert meta(res, "files") == 2
        assert meta(res, "bytes_rehashed") == (src / "pkg/m.py").stat().st_size + 8
        assert meta(res, "skipped") == {"binary": 1}
        assert "python" in meta(res, "languages")
        manifest = read_table(home, "source_files")
        assert sorted(manifest["path"]) == ["README.md", "pkg/m.py"]

        (src / "pkg" / "m.py").write_text("def f():\n    return 2\n")
        res2 = dg.materialize([source_files], resources=resources(src, home), instance=instance)
        assert meta(res2, "status_changed") == 1
        assert meta(res2, "status_unchanged") == 1
        assert meta(res2, "files_rehashed") == 1


def test_the_metadata_and_the_plan_name_every_ignored_directory_with_its_rule(tmp_path, nova_env):
    src = tmp_path / "src"
    for rel in ("pip/operations/build/metadata.py", "build/lib/copy.py", "docs/_build/x.py", "docs/a.md"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x = 1\n")
    (src / "docs/.gitignore").write_text("_build/\n")
    home = nova_env["home"]
    with dg.instance_for_test() as instance:
        res = dg.materialize([source_files], resources=resources(src, home), instance=instance)
    assert meta(res, "ignored_dirs") == {
        "build/": "built-in /build/ (root only)",
        "docs/_build/": "docs/.gitignore:1 _build/",
    }
    assert meta(res, "ignored_dirs_count") == 2
    assert "pip/operations/build/metadata.py" in set(read_table(home, "source_files")["path"])
    from nova_pipeline_tests.cli.test_cli import nova

    out = nova(["plan"], {"NOVA_SOURCE_DIR": str(src), "NOVA_HOME": str(home), "COLUMNS": "200"}, tmp_path)
    assert "ignored: 2 dirs" in out.stdout and "docs/.gitignore:1 _build/" in out.stdout, out.stdout


def test_missing_source_dir_fails_naming_the_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    with dg.instance_for_test() as instance, pytest.raises(SettingsError, match=str(missing)):
        dg.materialize([source_files], resources=resources(missing, tmp_path / "h"), instance=instance)


def run_cli_job(env_extra, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}
    env.update(env_extra)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "execute",
            "-m",
            "nova_pipeline.definitions",
            "-j",
            "rebuild",
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.integration
def test_rebuild_job_on_real_tree_twice(stdlib_tree, nova_env, tmp_path):
    env = {
        "NOVA_SOURCE_DIR": str(stdlib_tree),
        "NOVA_HOME": str(nova_env["home"]),
        "DAGSTER_HOME": str(nova_env["dagster_home"]),
    }
    first = run_cli_job(env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(nova_env["dagster_home"])) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].is_success
        ev = instance.get_latest_materialization_event(dg.AssetKey("source_files"))
        files = ev.asset_materialization.metadata["files"].value
        assert files == sum(1 for p in stdlib_tree.rglob("*") if p.is_file())
    second = run_cli_job(env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(nova_env["dagster_home"])) as instance:
        ev = instance.get_latest_materialization_event(dg.AssetKey("source_files"))
        md = ev.asset_materialization.metadata
        assert md["bytes_rehashed"].value == 0
        assert md["status_unchanged"].value == files
        # nothing to embed: the model is never loaded and torch never imported in the run's process
        vmd = instance.get_latest_materialization_event(
            dg.AssetKey("vector_index")
        ).asset_materialization.metadata
        assert vmd["embedded"].value == 0 and vmd["model_loaded"].value is False
        assert vmd["torch_imported"].value is False
        gmd = instance.get_latest_materialization_event(
            dg.AssetKey("golden_copy")
        ).asset_materialization.metadata
        assert gmd["promoted"].value is False and gmd["reason"].value.startswith("unchanged: CURRENT")
    assert sorted(os.listdir(tmp_path)) == sorted(["src", "nova_home", "dagster_home"])  # nothing stray


@pytest.mark.integration
def test_rebuild_job_on_postgres_storage(json_tree, tmp_path, pg_database, pg_query):
    dagster_home = tmp_path / "dagster_pg_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO_ROOT / "dagster.postgres.yaml").read_text())
    env = {
        "NOVA_SOURCE_DIR": str(json_tree),
        "NOVA_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(dagster_home),
        **pg_database,
    }
    proc = run_cli_job(env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = pg_database["DAGSTER_PG_DB"]
    runs = pg_query(db, "SELECT run_id, pipeline_name, status FROM runs")
    assert len(runs) == 1
    run_id, job_name, status = runs[0]
    assert (job_name, status) == ("rebuild", "SUCCESS")
    mats = pg_query(
        db,
        "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        (run_id,),
    )
    assert {m[0] for m in mats} == {
        '["source_files"]',
        '["frequent_patterns"]',
        '["compression_dictionary"]',
        '["compressed_store"]',
        '["source_chunks"]',
        '["lexical_index"]',
        '["vector_index"]',
        '["code_graph"]',
        '["golden_copy"]',
    }
    checks = pg_query(
        db,
        "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_CHECK_EVALUATION'",
        (run_id,),
    )
    assert checks[0][0] == 6
    # nothing of the run went to SQLite files
    assert not any(p.suffix == ".db" for p in dagster_home.rglob("*"))

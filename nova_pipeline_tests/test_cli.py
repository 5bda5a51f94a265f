"""The ``nova`` command, run as a user runs it: a subprocess with the environment as its only input."""

import os
import subprocess
import sys

import dagster as dg
import pytest

from nova_pipeline.core import backup, golden
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, run_dagster_cli


def nova(args, env, cwd, timeout=600):
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}, **env}
    return subprocess.run([sys.executable, "-m", "nova_pipeline.cli", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_resume_re_executes_the_failed_runs_own_job(json_tree, tmp_path):
    home, dhome = tmp_path / "home", tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {"NOVA_HOME": str(home), "DAGSTER_HOME": str(dhome)}
    build_home(json_tree, home)
    failed = run_dagster_cli(
        ["job", "execute", "-m", "nova_pipeline.definitions", "-j", "backup"], env, tmp_path
    )
    assert failed.returncode != 0 and "no golden copy" in failed.stderr  # nothing to back up yet
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        run = instance.get_runs()[0]
        assert run.is_failure and run.job_name == "backup"
    golden.promote(home, FakeEmbedder.fingerprint)

    resumed = nova(["resume", run.run_id], env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        latest = instance.get_runs()[0]
        assert latest.is_success and latest.parent_run_id == run.run_id and latest.job_name == "backup"
    assert len(backup.list_backups(home)) == 1  # the backup job ran, not a rebuild

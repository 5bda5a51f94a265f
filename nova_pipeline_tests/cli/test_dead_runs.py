"""Runs that die with their process: SIGKILL five `nova rebuild`s in a row (more than the writer pool's
limit of 4) with the repository's dagster.yaml; every one is found, failed with the reason and its pool slot
freed, a plain rebuild finishes, and `nova resume` (by the 8 characters the UI shows) re-executes one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from nova_pipeline.deploy.runs import PID_TAG, claimed_slots
from nova_pipeline_tests.cli.test_cli import nova
from nova_pipeline_tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def slice_started(instance, run_id) -> bool:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    return any("reconcile_vector_slice" in (r.event_log_entry.step_key or "") for r in records)


def test_five_killed_rebuilds_are_failed_with_the_reason_their_slots_freed_and_one_resumes(
    json_tree, tmp_path, monkeypatch
):
    home, dhome = tmp_path / "home", tmp_path / "dagster_home"
    dhome.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dhome))  # the repository's dagster.yaml reads it
    shutil.copy(REPO_ROOT / "dagster.yaml", dhome / "dagster.yaml")  # QueuedRunCoordinator, pool limit 4
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))},
        "NOVA_HOME": str(home),
        "DAGSTER_HOME": str(dhome),
        "HF_HUB_OFFLINE": "1",
    }
    # the storage's tables are made here, once: this test's poll and the first rebuild both creating them
    # stamped alembic_version twice ("more than one head present"), once in a suite run under load
    with dg.DagsterInstance.from_config(str(dhome)):
        pass
    killed = []
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "nova_pipeline.cli", "rebuild", "--source", str(json_tree)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        run_id = None
        with dg.DagsterInstance.from_config(str(dhome)) as instance:
            while time.monotonic() < deadline and proc.poll() is None:
                runs = instance.get_runs(limit=1)
                if runs and runs[0].run_id not in killed and slice_started(instance, runs[0].run_id):
                    run_id = runs[0].run_id
                    break
                time.sleep(0.05)
        assert run_id, "the rebuild never reached vector_index"
        os.killpg(proc.pid, signal.SIGKILL)  # mid-step, holding its slot of the writer pool
        proc.wait()
        killed.append(run_id)
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        last = instance.get_run_by_id(killed[-1])
        assert last.status == dg.DagsterRunStatus.STARTED and PID_TAG in last.tags  # as a kill leaves it
        assert killed[-1] in claimed_slots(instance)

    report = nova(["health", "--json", "--skip-model"], env, tmp_path)  # finds the last one, and fails it
    runs = {c["name"]: c for c in json.loads(report.stdout)["checks"]}["runs and pool slots"]
    assert runs["level"] == "warning" and f"nova resume {killed[-1][:8]}" in runs["detail"], runs
    assert "is gone: killed or crashed; marked failed" in runs["detail"]

    plain = nova(["rebuild", "--source", str(json_tree)], env, tmp_path)
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        for run_id in killed:
            run = instance.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.FAILURE, run_id
            events = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(run_id).records]
            messages = [e.message or "" for e in events if e is not None]  # what the UI shows
            assert any("is gone: killed or crashed" in m for m in messages), (run_id, messages[-4:])
        assert claimed_slots(instance) == {}

    resumed = nova(["resume", killed[0][:8]], env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        mat = instance.get_latest_materialization_event(dg.AssetKey("vector_index")).asset_materialization
        assert mat.metadata["embedded"].value == 0  # the plain rebuild embedded the rest: nothing left
    again = nova(["resume", killed[0][:8]], env, tmp_path)
    assert again.returncode == 0  # a failed run can be resumed again

    fresh = nova(["health", "--json", "--skip-model"], env, tmp_path)  # a fresh build: healthy, one warning
    assert fresh.returncode == 0, fresh.stdout
    levels = {c["name"]: c["level"] for c in json.loads(fresh.stdout)["checks"]}
    assert levels["newest backup"] == "warning" and levels["runs and pool slots"] == "ok", levels
    assert "critical" not in levels.values(), levels
    assert nova(["health", "--strict", "--skip-model"], env, tmp_path).returncode == 1


def test_resume_refuses_a_run_that_is_still_running_in_one_line(tmp_path):
    dhome = tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        from nova_pipeline.deploy.runs import process_tags

        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), tags=process_tags())
        instance.handle_new_event(  # started, by this (living) process
            dg.EventLogEntry(
                error_info=None,
                level="DEBUG",
                user_message="",
                run_id=run.run_id,
                timestamp=time.time(),
                dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, "g"),
            )
        )
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    out = nova(["resume", run.run_id[:8]], {"DAGSTER_HOME": str(dhome)}, tmp_path)
    assert out.returncode == 2 and "still running" in out.stderr and "Traceback" not in out.stderr
    assert len([ln for ln in out.stderr.splitlines() if ln.strip()]) <= 2


def test_the_dead_runs_sensor_fails_a_run_whose_process_is_gone_and_frees_its_slot(tmp_path):
    from nova_pipeline.defs.serving import dead_runs
    from nova_pipeline.deploy.runs import process_tags

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    tags = process_tags(gone.pid)  # the process that "executes" the run, then dies
    gone.wait()
    dhome = tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), tags=tags)
        instance.handle_new_event(
            dg.EventLogEntry(
                error_info=None,
                level="DEBUG",
                user_message="",
                run_id=run.run_id,
                timestamp=time.time(),
                dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, "g"),
            )
        )
        instance.event_log_storage.set_concurrency_slots("vector_index_writer", 1)
        instance.event_log_storage.claim_concurrency_slot("vector_index_writer", run.run_id, "step")
        assert claimed_slots(instance) == {run.run_id: 1}
        result = dead_runs(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SkipReason) and run.run_id[:8] in result.skip_message
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert claimed_slots(instance) == {}
        again = dead_runs(dg.build_sensor_context(instance=instance))
        assert again.skip_message == "no run of this host lost its process"

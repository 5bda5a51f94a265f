"""The source_tree_changed sensor, evaluated with build_sensor_context on a real tree and instance: one
run request per change, none while a run is in flight."""

import time

import dagster as dg

from nova_pipeline.defs.ingest import source_tree_changed
from nova_pipeline.defs.resources import NovaSettings


def tick(instance, src, home, cursor=None):
    ctx = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"nova": NovaSettings(nova_home=str(home), source_dir=str(src))},
    )
    return source_tree_changed(ctx), ctx.cursor


def test_one_run_request_per_change_and_none_while_a_run_is_in_flight(json_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        first, cursor = tick(instance, json_tree, home)
        assert isinstance(first, dg.RunRequest) and first.run_key.startswith("tree-")
        again, cursor2 = tick(instance, json_tree, home, cursor)
        assert isinstance(again, dg.SkipReason) and "unchanged" in again.skip_message and cursor2 == cursor
        time.sleep(0.01)
        (json_tree / "json" / "decoder.py").write_text("# edited\n")
        changed, cursor3 = tick(instance, json_tree, home, cursor)
        assert isinstance(changed, dg.RunRequest) and changed.run_key != first.run_key
        (json_tree / "json" / "__pycache__").mkdir(exist_ok=True)
        (json_tree / "json" / "__pycache__" / "x.pyc").write_bytes(b"\0")  # ignored by the scan's rules
        assert isinstance(tick(instance, json_tree, home, cursor3)[0], dg.SkipReason)

        run = instance.create_run_for_job(
            dg.GraphDefinition("live_update").to_job(), status=dg.DagsterRunStatus.STARTED
        )
        (json_tree / "json" / "encoder.py").write_text("# edited too\n")
        busy, cursor4 = tick(instance, json_tree, home, cursor3)
        assert isinstance(busy, dg.SkipReason) and run.run_id[:8] in busy.skip_message
        assert cursor4 == cursor3  # the change is kept for later
        instance.report_run_failed(instance.get_run_by_id(run.run_id))
        later, _ = tick(instance, json_tree, home, cursor4)
        assert isinstance(later, dg.RunRequest)

import os
import time

import pytest

from nova_pipeline.core.keys import SOURCE_CHUNKS
from nova_pipeline.core.protect import backup, golden
from nova_pipeline.core.serving import health
from nova_pipeline.core.serving.stats import collect_stats, describe_state
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import write_table
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, free_port

FP = FakeEmbedder.fingerprint


def test_a_fresh_build_is_healthy_with_one_warning_no_backup_yet(json_tree, tmp_path):
    """Right after a first build the only finding is "no backup": a warning, not a page."""
    home = tmp_path / "home"
    chunks = build_home(json_tree, home)
    golden.promote(home, FP)
    facts = health.RunFacts(last_rebuild=("SUCCESS", time.time()))
    checks = health.run_checks(home, None, FP, 2048, None, facts, load_model=False)
    by = {c.name: c for c in checks}
    assert (
        by["primary vector store"].level == "ok"
        and f"{len(chunks):,} vectors" in by["primary vector store"].detail
    )
    assert by["golden copy"].level == "ok" and by["PostgreSQL"].level == "n/a"
    assert by["newest backup"].level == "warning" and "nova backup create" in by["newest backup"].detail
    assert [c.name for c in checks if c.level not in ("ok", "n/a")] == ["newest backup"]
    assert health.healthy(checks) and not health.healthy(checks, strict=True)


DAY = 24 * 3600.0


@pytest.mark.parametrize(
    "age_h, schedule, level",
    [
        (2, None, "ok"),
        (30, None, "warning"),  # old, but nothing promised backups
        (30, (True, DAY), "ok" if False else "warning"),  # 30 h: not yet twice the daily interval
        (49, (True, DAY), "critical"),  # the schedule runs and produced nothing for two intervals
        (49, (False, DAY), "warning"),  # the schedule is off
    ],
)
def test_the_backup_check_is_critical_only_when_a_running_schedule_fell_behind(
    json_tree, tmp_path, age_h, schedule, level
):
    home = tmp_path / "home"
    build_home(json_tree, home)
    golden.promote(home, FP)
    b = backup.create_backup(home).info
    os.utime(b.path, (time.time() - age_h * 3600,) * 2)
    assert health.backup_age(home, schedule).level == level


@pytest.mark.parametrize(
    "check, level",
    [
        (lambda h: health.last_run("FAILURE", time.time()), "critical"),
        (lambda h: health.last_run(None, None), "warning"),
        (lambda h: health.last_run("STARTED", time.time()), "ok"),
        (lambda h: health.postgres("postgresql://nobody@127.0.0.1:1/none", timeout=2), "critical"),
        (lambda h: health.postgres(None), "n/a"),
        (
            lambda h: health.runs_and_slots(health.RunFacts(dead_runs=[("abcdef1234", "rebuild", "gone")])),
            "warning",
        ),
        (lambda h: health.runs_and_slots(health.RunFacts(claimed_slots={"r1": 1}, live_runs={"r1"})), "ok"),
        (lambda h: health.runs_and_slots(health.RunFacts(claimed_slots={"r1": 1})), "warning"),
        (lambda h: health.golden_quick(h), "warning"),  # no golden copy yet: nothing to fail over to
        (lambda h: health.memory_headroom(h, 2048), "n/a"),
    ],
)
def test_levels(tmp_path, check, level):
    assert check(tmp_path).level == level


def test_a_dead_primary_is_critical_unless_failed_over_and_a_damaged_golden_copy_is_critical(
    json_tree, tmp_path
):
    from nova_pipeline.core.serving.pointer import BACKUP, update_state

    home = tmp_path / "home"
    build_home(json_tree, home)
    golden.promote(home, FP)
    dead = f"http://127.0.0.1:{free_port()}"
    down = health.primary_store(home, dead, FP, timeout=20)
    assert down.level == "critical" and dead in down.detail and "active: primary" in down.detail
    update_state(home, lambda st: setattr(st, "active", BACKUP))
    assert health.primary_store(home, dead, FP, timeout=20).level == "warning"  # searches still answered
    (home / "golden" / golden.current_version(home).name / "model.json").chmod(0o644)
    (home / "golden" / golden.current_version(home).name / "model.json").write_text("{}")
    assert health.golden_quick(home).level == "critical"  # resized


def test_health_and_the_golden_copy_give_one_memory_number(json_tree, tmp_path):
    from nova_pipeline.core.serving.estimate import estimate_for_version

    home = tmp_path / "home"
    build_home(json_tree, home)
    v = golden.promote(home, FP).version
    est = estimate_for_version(v, max_memory_mb=2048)
    detail = health.memory_headroom(home, 2048).detail
    assert f"{est.required_bytes / 2**20:,.1f} MB" in detail  # the number golden_copy's metadata reports


def test_stats_and_state_describe_what_is_built(json_tree, tmp_path):
    home = tmp_path / "home"
    chunks = build_home(json_tree, home)
    golden.promote(home, FP)
    s = Settings.build(None, home, require_source=False)
    rows = {r["asset"]: r for r in describe_state(s, FP, 2048)}
    assert {
        "source_files",
        "compressed_store",
        "source_chunks",
        "vector_index",
        "golden_copy",
        "failover",
    } <= set(rows)
    assert f"{len(chunks):,} vectors" in rows["vector_index"]["what"]
    assert rows["lexical_index"]["what"].startswith(f"{len(chunks):,} documents") and not rows[
        "lexical_index"
    ].get("warning")
    write_table(home, SOURCE_CHUNKS, chunks.iloc[1:])  # another version of the table: the digest follows
    stale = {r["asset"]: r for r in describe_state(s, FP, 2048)}["lexical_index"]
    assert stale.get("warning") and "not of the current chunks" in stale["what"]
    write_table(home, SOURCE_CHUNKS, chunks)
    stats = collect_stats(s, FP, {"cache_hits": 3, "embedded": 1, "upserted": 4})
    assert stats["vector_store"]["vectors"] == len(chunks) and stats["vector_store"]["bytes_on_disk"] > 0
    assert stats["embedding_cache"]["entries"] == chunks["content_blake3"].nunique()
    assert stats["embedding_cache"]["last_run"]["hit_rate"] == 0.75
    assert stats["compressed_store"]["objects"] == 5 and stats["compressed_store"]["ratio"] > 1
    assert stats["lexical_index"]["documents"] == len(chunks) and stats["lexical_index"]["bytes"] > 0
    assert stats["system"]["cpus"] >= 1 and stats["system"]["memory_available"] > 0
    empty = Settings.build(None, tmp_path / "empty", require_source=False)
    assert describe_state(empty, FP, 2048) == []
    assert collect_stats(empty, FP, None)["vector_store"]["vectors"] == 0
    assert not empty.layout.vectors.exists()  # reading stats created no Chroma data dir

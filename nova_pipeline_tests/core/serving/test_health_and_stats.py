import os
import time

from nova_pipeline.core.protect import backup, golden
from nova_pipeline.core.serving import health
from nova_pipeline.core.serving.stats import collect_stats, describe_state
from nova_pipeline.core.settings import Settings
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, free_port

FP = FakeEmbedder.fingerprint


def test_health_checks_on_a_built_home_and_a_dead_primary(json_tree, tmp_path):
    home = tmp_path / "home"
    chunks = build_home(json_tree, home)
    golden.promote(home, FP)
    checks = health.run_checks(home, None, FP, 2048, None, ("SUCCESS", time.time()), load_model=False)
    by = {c.name: c for c in checks}
    assert by["primary vector store"].ok and f"{len(chunks):,} vectors" in by["primary vector store"].detail
    assert by["golden copy"].ok and by["PostgreSQL"].ok is None and by["last rebuild run"].ok
    assert by["newest backup"].ok is False and "nova backup create" in by["newest backup"].detail
    assert not health.healthy(checks)
    b = backup.create_backup(home).info
    assert health.backup_age(home).ok
    os.utime(b.path, (time.time() - 30 * 3600,) * 2)
    assert health.backup_age(home).ok is False  # 30 h old: the daily schedule stopped
    dead = f"http://127.0.0.1:{free_port()}"
    down = health.primary_store(home, dead, FP, timeout=20)
    assert down.ok is False and dead in down.detail and "active: primary" in down.detail
    assert health.postgres("postgresql://nobody@127.0.0.1:1/none", timeout=2).ok is False
    assert health.last_run("FAILURE", time.time()).ok is False and health.last_run(None, None).ok is False
    (home / "golden" / golden.current_version(home).name / "model.json").chmod(0o644)
    (home / "golden" / golden.current_version(home).name / "model.json").write_text("{}")
    assert health.golden_quick(home).ok is False  # resized


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

import random

import blake3
import pandas as pd
import pytest

from nova_pipeline.core.compression.patterns import (
    carry_timestamps,
    display_pattern,
    find_patterns,
    plan_shards,
)
from nova_pipeline.core.compression.repeats import PatternOptions, analyse_shard
from nova_pipeline.core.errors import MemoryLimitError
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions

HEADER = (
    "# Licensed to the Example Foundation under one or more contributor license agreements.\n"
    "# The Example Foundation licenses this file to you under the Example License, Version 2.0;\n"
    "# you may not use this file except in compliance with the License. See NOTICE for details.\n"
)


def make_tree(root, n=12, seed=0):
    rnd = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda", "theta"]
    for i in range(n):
        body = "\n".join(
            f"def f{i}_{j}({rnd.choice(words)}_{rnd.randint(0, 10**6)}):\n    return {rnd.randint(0, 10**9)}"
            for j in range(20)
        )
        (root / f"m{i}.py").write_text(HEADER + body + "\n")
    return scan(ScanOptions(root)).manifest


def test_a_repeated_header_is_one_maximal_pattern(tmp_path):
    manifest = make_tree(tmp_path)
    df, stats = find_patterns(tmp_path, manifest, PatternOptions(top_k=20, max_workers=1), tmp_path / "c")
    top = df.iloc[0]
    # the whole header, extended as far as every copy agrees ("\ndef f" follows it in each file)
    assert top["pattern"] == HEADER.encode() + b"def f"
    assert top["frequency"] == 12 and top["file_count"] == 12
    # no shifted window of the header is reported beside it: a pattern inside it must repeat more often
    # (e.g. "he Example Foundation " occurs twice per header)
    inside = df[[p in top["pattern"] for p in df["pattern"]]].iloc[1:]
    assert (inside["frequency"] >= 2 * 12).all()
    assert len(inside) <= 3
    assert list(df.columns) == ["pattern", "frequency", "file_count", "first_seen", "last_updated"]


def test_shard_analysis_finds_left_and_right_maximal_repeats():
    contents = [b"xxABCDEFGHIJyy", b"zzABCDEFGHIJww", b"qqABCDEFGHIJrr"]
    cands = analyse_shard(contents, PatternOptions(min_length=8, min_frequency=3, top_k=5))
    assert cands[0] == (b"ABCDEFGHIJ", 3)
    assert all(p == b"ABCDEFGHIJ" or len(p) < 8 for p, _ in cands)


def test_cache_and_first_seen_survive(tmp_path):
    manifest = make_tree(tmp_path)
    opts = PatternOptions(top_k=10, max_workers=1)
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    df1, s1 = find_patterns(tmp_path, manifest, opts, tmp_path / "c", now=t0)
    assert s1.shards_analysed == s1.shards > 0
    t1 = pd.Timestamp("2026-02-01", tz="UTC")
    df2, s2 = find_patterns(tmp_path, manifest, opts, tmp_path / "c", previous=df1, now=t1)
    assert s2.shards_analysed == 0 and s2.shards_cached == s1.shards
    assert (df2["first_seen"] == t0).all()
    assert (df2["last_updated"] == t0).all()  # counts unchanged
    # a new file with the header: first_seen stays, last_updated moves for the header
    (tmp_path / "new.py").write_text(HEADER + "def f_new():\n    return 0\n")
    m3 = scan(ScanOptions(tmp_path), manifest).manifest
    df3, s3 = find_patterns(tmp_path, m3, opts, tmp_path / "c", previous=df2, now=t1)
    row = df3.set_index("pattern").loc[df1.iloc[0]["pattern"]]
    assert row["first_seen"] == t0 and row["last_updated"] == t1 and row["frequency"] == 13
    assert s3.shards_analysed == 1  # only the shard the new file fell into


def test_after_an_edit_unchanged_shards_count_only_the_new_finalists(tmp_path, monkeypatch):
    """Finalist counts are cached per shard and pattern: after a file is added, the unchanged shards count
    only the finalists they have no count for, and the result equals an analysis from an empty cache."""
    from nova_pipeline.core.compression import patterns as patterns_mod

    src = tmp_path / "src"
    src.mkdir()
    manifest = make_tree(src, n=30)
    opts = PatternOptions(top_k=15, max_workers=1, shard_mb=0.004)
    df1, s1 = find_patterns(src, manifest, opts, tmp_path / "c")
    (src / "new.py").write_text(HEADER + "def brand_new_function_of_the_edit():\n    return 0\n" * 3)
    m2 = scan(ScanOptions(src), manifest).manifest
    counted = []
    real = patterns_mod.count_patterns
    monkeypatch.setattr(patterns_mod, "count_patterns", lambda c, p: counted.append(len(p)) or real(c, p))
    df2, s2 = find_patterns(src, m2, opts, tmp_path / "c")
    fresh, _ = find_patterns(src, m2, opts, tmp_path / "fresh")
    cols = ["pattern", "frequency", "file_count"]
    assert df2[cols].equals(fresh[cols]) and s1.shards > 4 and s2.shards_analysed == 1
    finalists = counted[-1]  # the fresh run counts every finalist in every shard
    assert max(counted[: s2.shards]) == finalists and sorted(counted[: s2.shards])[-2] < finalists / 2


def test_each_edit_of_a_file_analyses_one_shard_again_and_equals_a_fresh_analysis(tmp_path):
    """Shards go by path: an edited file's new content falls into the shard its old content left. By
    content hash, most of these edits moved a content between two shards, and both were analysed again."""
    src = tmp_path / "src"
    src.mkdir()
    manifest = make_tree(src, n=30)
    opts = PatternOptions(top_k=15, max_workers=1, shard_mb=0.004)
    _, s0 = find_patterns(src, manifest, opts, tmp_path / "c")
    assert s0.shards >= 8
    for i in (1, 7, 13, 22):
        path = src / f"m{i}.py"
        path.write_text(path.read_text() + f"def edited_{i}():\n    return {i}\n")
        manifest = scan(ScanOptions(src), manifest).manifest
        df, stats = find_patterns(src, manifest, opts, tmp_path / "c")
        assert stats.shards_analysed == 1, (i, stats)
    fresh, _ = find_patterns(src, manifest, opts, tmp_path / "fresh")
    cols = ["pattern", "frequency", "file_count"]
    assert df[cols].equals(fresh[cols])


def test_parallel_shards_match_serial(tmp_path):
    manifest = make_tree(tmp_path, n=30)
    opts1 = PatternOptions(top_k=15, max_workers=1, shard_mb=0.02)
    opts2 = PatternOptions(top_k=15, max_workers=2, shard_mb=0.02)
    a, sa = find_patterns(tmp_path, manifest, opts1, tmp_path / "c1")
    b, sb = find_patterns(tmp_path, manifest, opts2, tmp_path / "c2")
    assert sa.shards > 1 and sb.workers == 2
    assert a[["pattern", "frequency", "file_count"]].equals(b[["pattern", "frequency", "file_count"]])


def test_a_limit_too_small_for_any_shard_is_refused_before_starting(tmp_path):
    manifest = make_tree(tmp_path, n=3)
    # 2 workers take about 64 MB each before holding a shard: 130 MB leaves 2 MB, too little for a
    # 64 KiB shard
    with pytest.raises(MemoryLimitError, match=r"memory_limit_mb=130 leaves 2 MB for 2 workers, too little"):
        find_patterns(tmp_path, manifest, PatternOptions(memory_limit_mb=130, max_workers=2), tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing was analysed


def test_going_over_the_limit_while_running_stops_the_analysis(tmp_path, monkeypatch):
    from nova_pipeline.core.compression import patterns

    manifest = make_tree(tmp_path, n=12)
    held = []
    real_worker = patterns._shard_worker

    def greedy_worker(items, options):  # analyses the shard for real, and really holds 300 MB more
        held.append(b"\x01" * (300 * 2**20))  # written, so its pages are resident
        return real_worker(items, options)

    monkeypatch.setattr(patterns, "_shard_worker", greedy_worker)
    # the plan fits (200 MB leaves 136 MB for one worker's shards); what the run then holds does not
    options = PatternOptions(memory_limit_mb=200, max_workers=1, shard_mb=0.01)
    with pytest.raises(MemoryLimitError, match=r"frequent_patterns used \d+ MB, over memory_limit_mb=200"):
        find_patterns(tmp_path, manifest, options, tmp_path / "c")
    assert len(held) == 1  # it stopped at the first check after going over, not at the end


def test_plan_shards_is_stable_when_a_file_is_added():
    digests = [blake3.blake3(str(i).encode()).hexdigest() for i in range(64)]
    before = plan_shards(digests, [1000] * len(digests), 20_000)
    after = plan_shards(digests + [blake3.blake3(b"new").hexdigest()], [1000] * 65, 20_000)
    assert len(before) == len(after) == 4
    changed = [s for s in after if before.get(s) != after[s]]
    assert len(changed) == 1


def test_display_escapes_and_shortens():
    assert display_pattern(b"a|b\n`c`") == "`a\\|b\\n'c'`"
    assert display_pattern(b"x" * 100, width=10).endswith("…`")


def test_carry_timestamps_without_previous():
    df = pd.DataFrame({"pattern": [b"abcdefgh"], "frequency": [3], "file_count": [2]})
    now = pd.Timestamp("2026-03-01", tz="UTC")
    out = carry_timestamps(df, None, now)
    assert out["first_seen"].iloc[0] == now and str(out["first_seen"].dtype) == "datetime64[us, UTC]"

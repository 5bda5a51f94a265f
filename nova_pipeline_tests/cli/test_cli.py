"""The ``nova`` command, run as a user runs it: a subprocess with the environment as its only input."""

import os
import subprocess
import sys

import dagster as dg
import pytest

from nova_pipeline.core.protect import backup, golden
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, run_dagster_cli


def nova(args, env, cwd, timeout=600):
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}, **env}
    return subprocess.run(
        [sys.executable, "-m", "nova_pipeline.cli", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


@pytest.mark.integration
def test_the_search_hint_names_nova_home_unless_it_is_the_default(tmp_path, monkeypatch):
    from nova_pipeline.cli.common import search_hint

    monkeypatch.chdir(tmp_path)
    assert search_hint(tmp_path / ".nova") == 'nova search "your question" -k 5'
    other = tmp_path / ".nova-email"
    assert search_hint(other) == f'NOVA_HOME={other} nova search "your question" -k 5'


def test_the_scan_line_counts_what_was_skipped_and_why():
    from nova_pipeline.cli.progress import describe

    m = {"files": 3, "bytes": 64, "status_added": 3, "bytes_rehashed": 64}
    assert "skipped" not in describe("scan", {**m, "skipped": {"binary": 0}})
    line = describe("scan", {**m, "skipped": {"too_large": 1, "binary": 2, "broken_symlink": 0}})
    assert line.endswith("; skipped 3 (binary 2, too_large 1)")


def test_the_lexical_line_says_built_delta_or_unchanged():
    from nova_pipeline.cli.progress import describe

    m = {"documents": 1200, "vocabulary": 900, "duration_s": 0.5}
    assert describe("lexical", {**m, "built": True, "how": "built"}).endswith("; built in 0.5 s")
    delta = {**m, "built": False, "how": "delta", "delta_added": 3, "delta_removed": 2}
    assert describe("lexical", delta).endswith("; a delta of +3 -2 on the base")
    assert describe("lexical", {**m, "built": False, "how": "unchanged"}).endswith("; unchanged")


def test_the_patterns_and_store_lines_say_unchanged_when_their_digest_kept_them():
    from nova_pipeline.cli.progress import describe

    p = {"patterns": 40, "shards_analysed": 0, "shards_cached": 12}
    kept = describe("patterns", {**p, "unchanged": True})
    assert kept.endswith("; unchanged (no file and no option changed)")
    assert describe("patterns", {**p, "unchanged": False}).endswith("; shards analysed 0, cached 12")
    c = {"objects": 1200, "objects_written": 0, "ratio_store": 3.1, "raw_bytes": 10, "stored_bytes": 3}
    assert describe("compress", {**c, "unchanged": True}).startswith("1,200 objects, unchanged; store ratio")
    assert describe("compress", {**c, "objects_written": 4}).startswith("1,200 objects, 4 new; store ratio")


def test_nova_stats_shows_nested_values_as_text_not_python_reprs():
    from nova_pipeline.cli.explore import _cell

    assert _cell({"cache_hits": 1200, "hit_rate": None}) == "cache hits: 1,200, hit rate: -"
    assert _cell([1.09, 1.35]) == "1.09, 1.35"
    assert _cell([{"pattern": "`x`", "files": 2}, {"pattern": "`y`", "files": 1}]) == (
        "pattern: `x`, files: 2\npattern: `y`, files: 1"
    )
    assert _cell(3.62345) == "3.623" and _cell(True) == "yes" and _cell([]) == "-" and _cell({}) == "-"


def test_nova_rebuild_shows_phases_and_fails_loudly(json_tree, tmp_path, monkeypatch):
    import json

    from nova_pipeline.core.compression.store import ContentStore
    from nova_pipeline_tests.conftest import REPO_ROOT, free_port

    home, dhome = tmp_path / "home", tmp_path / "dagster_home"
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(dhome))  # this process reads the runs back
    env = {"NOVA_HOME": str(home), "DAGSTER_HOME": str(dhome), "HF_HUB_OFFLINE": "1"}
    first = nova(["rebuild", "--source", str(json_tree)], env, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lines = first.stdout.splitlines()
    for phase in ("scan", "patterns", "dictionary", "compress", "chunk", "embed", "golden copy"):
        assert any(line.startswith(phase) for line in lines), phase  # one line per phase without a terminal
    assert "DEBUG" not in first.stdout + first.stderr and "succeeded" in first.stdout
    assert "NOVA_HOME=" in first.stdout  # a store other than ./.nova: the search hint names it
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        run = instance.get_runs()[0]
        assert run.job_name == "rebuild" and run.is_success and run.tags["nova/command"] == "nova rebuild"
    assert (home / "logs" / "nova.jsonl").exists()

    again = nova(["rebuild", "--source", str(json_tree), "--json"], env, tmp_path)
    summary = json.loads(again.stdout)
    assert again.returncode == 0 and summary["success"]
    embed = next(p for p in summary["phases"] if p["phase"] == "embed")
    assert embed["metadata"]["embedded"] == 0 and all(c["passed"] for c in embed["checks"])

    store = ContentStore(home)
    path = store.object_path(store.index()["key"].iloc[0])
    raw = bytearray(open(path, "rb").read())
    raw[-1] ^= 0x20
    open(path, "wb").write(raw)
    blocked = nova(["rebuild", "--source", str(json_tree), "--quiet"], env, tmp_path)
    assert blocked.returncode == 1
    assert "blocking check failed" in blocked.stdout and "store_round_trip" in blocked.stdout
    assert "nova resume " in blocked.stdout
    open(path, "wb").write(bytes(raw[:-1]) + bytes([raw[-1] ^ 0x20]))  # repaired

    dead = nova(
        ["rebuild", "--source", str(json_tree)],
        {**env, "NOVA_CHROMA_URL": f"http://127.0.0.1:{free_port()}"},
        tmp_path,
    )
    assert dead.returncode == 1
    assert "step vector_index.plan_vector_slices failed" in dead.stdout and "unreachable" in dead.stdout
    with dg.DagsterInstance.from_config(str(dhome)) as instance:
        failed = instance.get_runs()[0]
    assert f"nova resume {failed.run_id}" in dead.stdout.replace("\n", " ")


def test_the_package_offers_search_and_a_searcher_without_importing_torch():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, nova_pipeline as n; "
            "assert 'torch' not in sys.modules and 'chromadb' not in sys.modules;"
            "from nova_pipeline.core.serving.searcher import Searcher; assert n.Searcher is Searcher;"
            "from nova_pipeline.core.settings import Settings; assert n.Settings is Settings;"
            "print(sorted(n.__all__))",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['Searcher', 'Settings', 'context', 'graph', 'search']"

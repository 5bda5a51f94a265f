"""The benchmarks still run: each in its smallest mode, end to end, as a user would start it.

Nothing here times anything (numbers go in notes, not assertions): a benchmark that nobody ran since a
change broke it cannot measure the next one. ``bench_scaleout``'s executor modes broke that way on Dec 6 and
stayed broken for a day. Each case checks the exit status and the lines the README and the issues quote.
"""

import os
import subprocess
import sys

import pytest

from nova_pipeline_tests.conftest import REPO_ROOT


def run_bench(args: list[str], timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}
    env.update(HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_scale_runs_the_rebuild_job_stage_by_stage_on_a_100_file_tree():
    out = run_bench(["benchmarks/bench_scale.py", "--tiers", "100"])
    assert "== 100: 100 files" in out and "anchor: read + blake3" in out
    for stage in ("scan", "patterns", "dictionary", "compression", "chunks", "lexical", "reconcile"):
        assert f"\n  {stage} " in out, stage
    assert "cold rebuild" in out and "unchanged rerun" in out and "one-file edit" in out and "peak RSS" in out


@pytest.mark.parametrize(
    "args, expect",
    [
        (
            ["benchmarks/bench_scaleout.py", "--free-embedder", "--free-chunks", "300"],
            [
                "anchor: raw SentenceTransformer.encode",
                "reconcile slim / Chroma's slim upsert",
                "backup estimate",
            ],
        ),
        (["benchmarks/bench_graph.py", "--sites", "10"], ["cold build", "precision", "recall"]),
    ],
    ids=["bench_scaleout-free-embedder", "bench_graph"],
)
def test_a_benchmark_runs_and_prints_its_ratios(args, expect):
    out = run_bench(args)
    for line in expect:
        assert line in out, line

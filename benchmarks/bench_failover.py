"""Failover, measured: detection and switch time, search latency per store, memory per chunk.

In one run, on a standard-library tree indexed with the real model into a real `chroma run` server:
  * time from SIGKILL of the server to the pointer flipping to the backup, with `dagster-daemon run` and the
    health sensor at its default interval (target <= 15 s), over --trials kills (the server is restarted and
    the daemon fails back between them);
  * query latency p50/p95 over 200 queries (the same query vectors) on the primary server, the in-memory
    backup (Chroma EphemeralClient loaded from the golden export) and the on-disk backup (the runtime copy);
  * the backup's memory per chunk, measured (RSS growth of loading it) next to the estimate's (export bytes
    per vector) and seed 004's 5 KB.

Usage: python benchmarks/bench_failover.py [--packages email,json,...] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nova_pipeline_tests.conftest import (  # noqa: E402 - the same process helpers the tests use
    free_port,
    start_chroma,
    start_process,
    stop,
    stop_group,
    wait_until,
)


def measure_memory(version, fingerprint):
    """Load a golden export into an in-memory Chroma store in two halves; ``(collection, fixed bytes,
    marginal bytes per chunk)`` from the RSS after each half."""
    import gc

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from nova_pipeline.core.index.vector_store import upsert_records
    from nova_pipeline.core.protect import golden

    files = golden.export_files(version.path)
    half = files[: len(files) // 2]
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    col = client.get_or_create_collection(  # as the backup store holds it: slim records
        f"bench-{fingerprint}",
        metadata={"records": "slim"},
        configuration={"hnsw": {"space": "cosine"}},
        embedding_function=None,
    )
    counts = []
    for part in (half, files[len(half) :]):
        for f in part:
            t = golden.read_shard(f)
            mat = golden.embedding_matrix(t)
            upsert_records(
                col,
                t.column("id").to_pylist(),
                mat,
                t.column("document").to_pylist(),
                [json.loads(m) for m in t.column("metadata").to_pylist()],
            )
        col.query(query_embeddings=mat[:1], n_results=1)
        gc.collect()
        counts.append((col.count(), proc.memory_info().rss))
    (n1, r1), (n2, r2) = counts
    marginal = (r2 - r1) / max(1, n2 - n1)
    return col, (r1 - rss0) - marginal * n1, marginal


def percentiles(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return f"p50 {statistics.median(ms):6.2f} ms   p95 {ms[int(0.95 * (len(ms) - 1))]:6.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", default="email,json,http,logging")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"})
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    procs = []
    chroma = None
    try:
        src = work / "src"
        for pkg in args.packages.split(","):
            shutil.copytree(stdlib / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        port = free_port()
        url, chroma = start_chroma(work / "chroma-data", work / "chroma.log", port)
        home, dhome = work / "home", work / "dagster_home"
        dhome.mkdir()
        shutil.copy(REPO / "dagster.yaml", dhome / "dagster.yaml")
        os.environ.update(
            {
                "DAGSTER_HOME": str(dhome),
                "NOVA_HOME": str(home),
                "NOVA_CHROMA_URL": url,
                "NOVA_SOURCE_DIR": str(src),
            }
        )
        chroma = run(src, home, dhome, url, port, chroma, work, procs, args)
    finally:
        for p in procs:
            stop_group(p)
        if chroma is not None:
            stop(chroma)
        shutil.rmtree(work, ignore_errors=True)


def run(src, home, dhome, url, port, chroma, work, procs, args):
    import dagster as dg

    from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder
    from nova_pipeline.core.index.vector_store import get_collection, open_client, open_client_at
    from nova_pipeline.core.protect import golden
    from nova_pipeline.core.serving.estimate import (
        CHROMA_FIXED_BYTES,
        CHROMA_MEMORY_FACTOR,
        estimate_for_version,
    )
    from nova_pipeline.core.serving.failover import FailoverSettings
    from nova_pipeline.core.serving.pointer import read_state
    from nova_pipeline.core.settings import Settings
    from nova_pipeline.defs.resources import EmbedderResource
    from nova_pipeline_tests.conftest import rebuild_graph, resources_for

    started = time.perf_counter()
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            rebuild_graph(),
            instance=instance,
            resources=resources_for(src, home, EmbedderResource(), chroma_url=url),
        ).success
    cur = golden.current_version(home)
    print(
        f"index: {cur.count:,} vectors of {sum(1 for p in src.rglob('*') if p.is_file())} stdlib files, "
        "built "
        f"on the server in {time.perf_counter() - started:.0f} s"
    )

    # latency, the same query vectors on each store
    model = SentenceTransformerEmbedder()
    texts = [
        t
        for t in golden.read_shard(golden.export_files(cur.path)[0], ["document"])
        .column("document")
        .to_pylist()
    ][:20]
    vecs = model.embed([t.split("\n", 2)[-1][:200] for t in texts])
    queries = [vecs[i % len(vecs)][None, :] for i in range(args.queries)]
    fp = model.fingerprint
    primary = get_collection(open_client(home, url), fp, create=False)
    settings = Settings.build(None, home, require_source=False, chroma_url=url)
    mem_col, fixed, marginal = measure_memory(cur, fp)
    disk_col = get_collection(open_client_at(settings.layout.runtime_vectors), fp, create=False)
    for name, col in (
        ("primary (chroma run, HTTP)", primary),
        ("backup in memory", mem_col),
        ("backup on disk (runtime copy)", disk_col),
    ):
        col.query(query_embeddings=queries[0], n_results=5)  # warm
        times = []
        for q in queries:
            t = time.perf_counter()
            col.query(query_embeddings=q, n_results=5)
            times.append(time.perf_counter() - t)
        print(f"query latency, {name:32s} {percentiles(times)}   over {len(times)} queries")
    est = estimate_for_version(cur)
    uncompressed = est.bytes_per_chunk / CHROMA_MEMORY_FACTOR
    print(
        f"memory per chunk of the in-memory backup: measured {marginal:,.0f} B marginal "
        f"({marginal / uncompressed:.2f}x the export's {uncompressed:,.0f} uncompressed bytes per chunk) "
        f"+ {fixed / 2**20:.0f} MB for the store; the estimate uses {est.bytes_per_chunk:,.0f} B "
        f"({CHROMA_MEMORY_FACTOR:g}x) + {CHROMA_FIXED_BYTES / 2**20:.0f} MB; seed 004 guessed 5,120 B"
    )
    print(
        f"estimate for {cur.count:,} chunks: {est.estimate_bytes / 2**20:.1f} MB, with the seed's buffer "
        f"{est.required_bytes / 2**20:.0f} MB required; zone {est.zone} -> {est.choice}"
    )

    # SIGKILL to the pointer flipping, with the real daemon at the default sensor interval
    env = {
        k: os.environ[k]
        for k in ("NOVA_HOME", "NOVA_CHROMA_URL", "DAGSTER_HOME", "HF_HUB_OFFLINE", "ANONYMIZED_TELEMETRY")
    }
    env["NOVA_FAILOVER_RESTORE_DELAY"] = "5"  # only the failback between trials; the failover is at defaults
    procs.append(
        start_process(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "nova_pipeline.definitions"],
            env,
            work / "daemon.log",
            cwd=work,
        )
    )
    wait_until(
        lambda: "primary healthy" in (work / "daemon.log").read_text(), 120, what="the first healthy tick"
    )
    flips = []
    for trial in range(args.trials):
        time.sleep(1 + 3.7 * trial)  # kill at a different phase of the sensor's ticks each time
        killed = time.monotonic()
        os.kill(chroma.pid, signal.SIGKILL)
        chroma.wait()
        wait_until(lambda: read_state(home).failed_over, 120, interval=0.1, what="the pointer flipping")
        flips.append(time.monotonic() - killed)
        print(f"trial {trial + 1}: SIGKILL to the pointer on the backup: {flips[-1]:5.1f} s")
        chroma = start_chroma(work / "chroma-data", work / "chroma.log", port)[1]
        wait_until(lambda: not read_state(home).failed_over, 180, what="the failback")
        # the next kill starts from a closed breaker, as a first outage would
        wait_until(lambda: read_state(home).breaker == "closed", 120, what="the health breaker closing")
    interval = FailoverSettings().probe_interval_s
    print(
        f"SIGKILL to flip: mean {statistics.mean(flips):.1f} s, max {max(flips):.1f} s "
        f"over {len(flips)} kills "
        f"(sensor minimum_interval_seconds={interval}; target <= 15 s)"
    )
    return chroma


if __name__ == "__main__":
    main()

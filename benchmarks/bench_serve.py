"""``nova serve`` under concurrent clients: throughput and latency at 1, 4 and 16 clients, vector and hybrid,
against the same queries run directly on a :class:`Searcher` in one process (the anchor).

The index: standard-library packages (real code nobody here wrote), built the way the rebuild job builds it,
with the real all-MiniLM-L6-v2 (its embedding cache makes a second run quick with ``--work DIR``). The
service: the real ``nova serve`` command in its own process on a free loopback port (the model loaded at
startup). Each client is a thread with its own HTTP connection, sending the queries back to back.

Printed, per mode and number of clients: requests, errors, throughput (requests/s), p50 and p95 latency
(ms, per request, as the client saw it); then the ratios the targets are stated in: throughput at 4 clients
over 1 client (two cores bound it at 2x), p95 at 16 clients over p50 at 1 client, and the service's
1-client throughput over the in-process anchor's (what HTTP and the service add).

Usage: python benchmarks/bench_serve.py [--packages json,email,http] [--requests 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import httpx  # noqa: E402

from nova_pipeline_tests.conftest import (  # noqa: E402 - the same process helpers the tests use
    free_port,
    start_process,
    stop_group,
    wait_until,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUERIES = [
    "decode a JSON document into Python objects",
    "serialize a dictionary with sorted keys",
    "parse an email message from bytes",
    "quote a header value for MIME",
    "read the status line of an HTTP response",
    "send a request with a body and headers",
    "escape special characters in a string",
    "format a date for an HTTP header",
    "JSONDecodeError",
    "parse_headers",
    "split an address list into name and address",
    "base64 encode the payload",
    "raise an error on an unknown encoding",
    "cookie expiry time parsing",
    "iterate over the parts of a multipart message",
    "the reason phrase of a status code",
]
CLIENTS = (1, 4, 16)
MODES = ("vector", "hybrid")


def build(src: Path, home: Path) -> int:
    """Index ``src`` into ``home`` with the real model through the rebuild graph; returns the chunk count."""
    import dagster as dg

    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import read_table
    from nova_pipeline.defs.resources import EmbedderResource
    from nova_pipeline_tests.conftest import materialize_rebuild

    with dg.instance_for_test() as instance:
        assert materialize_rebuild(src, home, instance, embedder=EmbedderResource()).success
    return len(read_table(home, SOURCE_CHUNKS))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_clients(call, clients: int, total: int) -> dict:
    """``total`` calls spread over ``clients`` threads; wall time, per-call latencies, errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    per = total // clients

    def worker(i: int) -> None:
        local, bad = [], 0
        session = call.session() if hasattr(call, "session") else None
        for n in range(per):
            q = QUERIES[(i * 7 + n) % len(QUERIES)]
            t0 = time.perf_counter()
            ok = call(q, session)
            local.append(time.perf_counter() - t0)
            bad += not ok
        with lock:
            latencies.extend(local)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * percentile(latencies, 0.95),
    }


class HttpCall:
    def __init__(self, base: str, mode: str):
        self.base, self.mode = base, mode

    def session(self):
        return httpx.Client(base_url=self.base, timeout=60)

    def __call__(self, q: str, session) -> bool:
        r = session.get("/search", params={"q": q, "k": 5, "mode": self.mode})
        return r.status_code == 200 and r.json()["store"] == "primary"


class DirectCall:
    def __init__(self, searcher, mode: str):
        self.searcher, self.mode = searcher, mode

    def __call__(self, q: str, session) -> bool:
        return self.searcher.search(q, 5, mode=self.mode).store == "primary"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", default="json,email,http")
    ap.add_argument("--requests", type=int, default=192, help="requests per measurement (split over clients)")
    ap.add_argument("--work", help="keep the index here (the embedding cache makes a second run quick)")
    ap.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2],
        help="nova serve --workers values to measure, comma-separated",
    )
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_serve_"))
    src, home = work / "src", work / "home"
    if not src.exists():
        for pkg in args.packages.split(","):
            shutil.copytree(STDLIB / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    t0 = time.perf_counter()
    chunks = build(src, home)
    print(
        f"index: {args.packages} from the standard library, {chunks:,} chunks, built in "
        f"{time.perf_counter() - t0:.0f} s (real all-MiniLM-L6-v2; {os.cpu_count()} cores)"
    )

    from nova_pipeline.core.index.embedding import LazyEmbedder
    from nova_pipeline.core.serving.searcher import Searcher
    from nova_pipeline.core.settings import Settings

    threads = int(os.environ.get("NOVA_SERVE_TORCH_THREADS", "1"))  # as nova serve: see service/app.py
    print(
        f"torch threads per forward pass: {threads} (NOVA_SERVE_TORCH_THREADS), in the service and the anchor"
    )
    searcher = Searcher(Settings.build(None, home, require_source=False), LazyEmbedder(threads=threads))
    for q in QUERIES:  # warm: the model, the views, the BM25 index
        searcher.search(q, 5, mode="hybrid")
    anchor = {mode: run_clients(DirectCall(searcher, mode), 1, args.requests // 2) for mode in MODES}
    anchor4 = {mode: run_clients(DirectCall(searcher, mode), 4, args.requests) for mode in MODES}
    searcher.close()

    services = {w: measure_service(home, work, w, args.requests) for w in args.workers}

    print(f"\n{'':32}{'requests':>9}{'errors':>7}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}")
    for mode in MODES:
        for label, r in (
            ("direct Searcher, 1 thread", anchor[mode]),
            ("direct Searcher, 4 threads", anchor4[mode]),
        ):
            print(
                f"{mode:>7} {label:<24}{r['requests']:>9}{r['errors']:>7}{r['rps']:>8.1f}{r['p50_ms']:>9.1f}"
                f"{r['p95_ms']:>9.1f}"
            )
        for w, (results, _) in services.items():
            for n in CLIENTS:
                r = results[(mode, n)]
                label = f"serve x{w}, {n:>2} clients"
                print(
                    f"{mode:>7} {label:<24}{r['requests']:>9}{r['errors']:>7}{r['rps']:>8.1f}"
                    f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}"
                )
    print("\nratios (targets: 4 clients >= 1.6x one client; p95 at 16 <= 8x p50 at 1; 0 errors)")
    for w, (results, rss) in services.items():
        print(f"  nova serve --workers {w}: {rss / 2**20:,.0f} MB RSS in all after the runs")
        for mode in MODES:
            one, four, sixteen = (results[(mode, n)] for n in CLIENTS)
            errors = sum(results[(mode, n)]["errors"] for n in CLIENTS)
            print(
                f"    {mode:>7}: 4 clients / 1 = {four['rps'] / one['rps']:.2f}x; "
                f"p95@16 / p50@1 = {sixteen['p95_ms'] / one['p50_ms']:.2f}x; errors {errors}; "
                f"service at 1 client / direct Searcher = {one['rps'] / anchor[mode]['rps']:.2f}x"
            )
    for mode in MODES:
        print(f"  direct Searcher {mode}: 4 threads / 1 = {anchor4[mode]['rps'] / anchor[mode]['rps']:.2f}x")


def measure_service(home: Path, work: Path, workers: int, requests: int) -> tuple[dict, int]:
    """Every mode and client count against ``nova serve --workers N``; returns the results and the RSS of
    its processes (bytes, after the runs)."""
    import psutil

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "NOVA_HOME": home,
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "NOVA_LOG_LEVEL": "WARNING",
    }
    proc = start_process(
        [sys.executable, "-m", "nova_pipeline.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env,
        work / f"serve-{workers}.log",
    )
    try:
        wait_until(lambda: _up(base), 180, what="nova serve answering")
        for q in QUERIES * workers:
            httpx.get(f"{base}/search", params={"q": q, "mode": "hybrid"}, timeout=60)
        results = {
            (mode, n): run_clients(HttpCall(base, mode), n, requests) for mode in MODES for n in CLIENTS
        }
        parent = psutil.Process(proc.pid)
        rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
    finally:
        stop_group(proc)
    return results, rss


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()

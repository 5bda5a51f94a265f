"""Benchmark the scan against its anchors, on the whole standard library of the running interpreter.

Prints, from one process:
  * cold scan throughput as a ratio to reading + blake3-hashing the same files in a bare loop
    (target >= 0.7x);
  * warm re-scan time as a ratio to a bare os.scandir + stat pass over the same files (target <= 2x);
  * peak RSS.
Each timing is the best of ``--repeat`` runs with a warm page cache, anchors and subject interleaved.

Usage: python benchmarks/bench_scan.py [--root DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sysconfig
import time
from pathlib import Path

import blake3

from nova_pipeline.core.ingest.manifest import DELETED, scan
from nova_pipeline.core.ingest.walk import ScanOptions


def bare_hash(files: list[str]) -> int:
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            data = fh.read()
        blake3.blake3(data).hexdigest()
        total += len(data)
    return total


def bare_stat(dirs: list[str], wanted: set[str]) -> int:
    n = 0
    for d in dirs:
        with os.scandir(d) as it:
            for entry in it:
                if entry.path in wanted:
                    entry.stat(follow_symlinks=False)
                    n += 1
    return n


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    root = Path(args.root)
    opts = ScanOptions(root)

    first = scan(opts)  # also warms the page cache
    live = first.manifest[first.manifest["status"] != DELETED]
    files = [str(root / p) for p in live["path"]]
    dirs = sorted({os.path.dirname(f) for f in files})
    wanted = set(files)
    nbytes = int(live["size"].sum())
    print(f"tree: {root}  files: {len(files):,}  bytes: {nbytes:,}  skipped: {dict(first.stats.skipped)}")

    t_bare_hash = t_cold = t_bare_stat = t_warm = float("inf")
    for _ in range(args.repeat):
        t_bare_hash = min(t_bare_hash, best(lambda: bare_hash(files), 1)[0])
        t_cold = min(t_cold, best(lambda: scan(opts), 1)[0])
        t_bare_stat = min(t_bare_stat, best(lambda: bare_stat(dirs, wanted), 1)[0])
        t, warm = best(lambda: scan(opts, first.manifest, known_binaries=first.binaries), 1)
        t_warm = min(t_warm, t)
        assert warm.stats.bytes_hashed == 0

    mbps = lambda t: nbytes / 1e6 / t  # noqa: E731
    print(f"cold scan:   {t_cold * 1e3:8.1f} ms  {mbps(t_cold):8.1f} MB/s")
    print(f"bare hash:   {t_bare_hash * 1e3:8.1f} ms  {mbps(t_bare_hash):8.1f} MB/s   (read + blake3 loop)")
    print(f"cold throughput ratio (scan / bare hash): {t_bare_hash / t_cold:.2f}x   target >= 0.70x")
    print(f"warm rescan: {t_warm * 1e3:8.1f} ms  (0 bytes re-hashed)")
    print(f"bare stat:   {t_bare_stat * 1e3:8.1f} ms   (os.scandir + stat over the same files)")
    print(f"warm time ratio (rescan / bare stat):     {t_warm / t_bare_stat:.2f}x   target <= 2.00x")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()

"""Benchmark dictionary, store and pattern analysis against their anchors, on the whole standard library.

Prints, from one process (per-file compression, about 20% of unique contents held out by blake3):
  * held-out ratio of our dictionary against zstd level 3 without one (target >= 1.06x);
  * the same against a dictionary of the same size from the `zstd --train` CLI on the same sample
    (target >= 0.99x; needs Debian's `zstd`);
  * store throughput against raw `zstandard` compression with the same dictionary on the same bytes
    (target >= 0.8x), for the compression stage and end to end (read, compress, verify, durable write);
  * frequent_patterns over the whole tree: wall time (target <= 60 s on 2 cores) and peak RSS (<= 1 GiB).

Usage: python benchmarks/bench_compression.py [--root DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

import zstandard as zstd

from nova_pipeline.core.compression.dictionary import (
    SAMPLE_FACTOR,
    DictionaryOptions,
    DictionaryRegistry,
    build_for_tree,
    choose_sample,
    heldout_ratio,
    is_heldout,
)
from nova_pipeline.core.compression.patterns import find_patterns
from nova_pipeline.core.compression.repeats import PatternOptions
from nova_pipeline.core.compression.store import ContentStore
from nova_pipeline.core.ingest.manifest import read_verified, scan, unique_contents
from nova_pipeline.core.ingest.walk import ScanOptions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=sysconfig.get_paths()["stdlib"])
    args = ap.parse_args()
    root = Path(args.root)
    work = Path(tempfile.mkdtemp(prefix="bench-compression-"))
    try:
        run(root, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(root: Path, work: Path) -> None:
    opts = DictionaryOptions()
    manifest = scan(ScanOptions(root)).manifest
    unique = unique_contents(root, manifest)
    pairs, _ = read_verified([(p, d) for d, p in unique])
    train = [(d, c) for d, c in pairs if not is_heldout(d, opts.heldout_percent)]
    held = [c for d, c in pairs if is_heldout(d, opts.heldout_percent)]
    print(
        f"tree: {root}  unique contents: {len(pairs):,} ({sum(map(len, (c for _, c in pairs))):,} bytes)  "
        f"held out: {len(held):,} ({sum(map(len, held)):,} bytes)"
    )

    # --- dictionary: ours (the asset's code path) ------------------------------------------------------
    registry = DictionaryRegistry(work / "home")
    info, _, _ = build_for_tree(unique, registry, opts)
    ours = registry.load(info.blake3)
    r_none = heldout_ratio(held, None, opts.level)
    r_ours = heldout_ratio(held, ours, opts.level)
    print(
        f"dictionary: {len(ours):,} B, trained in {info.training_seconds:.2f} s on {info.samples} samples "
        f"({info.sample_bytes:,} B)"
    )
    print(f"held-out ratio, zstd -{opts.level} no dictionary: {r_none:.3f}x")
    print(f"held-out ratio, our dictionary:          {r_ours:.3f}x")
    print(f"  ours / no dictionary:  {r_ours / r_none:.3f}x   target >= 1.06x")

    # --- dictionary: zstd CLI on the same sample -------------------------------------------------------
    zstd_cli = shutil.which("zstd")
    if zstd_cli is None:
        print("  zstd CLI not found (apt-get install zstd): CLI comparison skipped")
    else:
        sample = choose_sample([c for _, c in train], [d for d, _ in train], opts.dict_size * SAMPLE_FACTOR)
        sdir = work / "samples"
        sdir.mkdir()
        for i, s in enumerate(sample):
            (sdir / f"{i:06d}").write_bytes(s)
        t0 = time.perf_counter()
        subprocess.run(
            [
                zstd_cli,
                "--train",
                "-q",
                f"-{opts.level}",
                f"--maxdict={len(ours)}",
                "-r",
                str(sdir),
                "-o",
                str(work / "cli.dict"),
            ],
            check=True,
        )
        t_cli = time.perf_counter() - t0
        cli = (work / "cli.dict").read_bytes()
        r_cli = heldout_ratio(held, cli, opts.level)
        print(f"held-out ratio, `zstd --train` dictionary ({len(cli):,} B, {t_cli:.2f} s): {r_cli:.3f}x")
        print(f"  ours / zstd --train:   {r_ours / r_cli:.3f}x   target >= 0.99x")

    # --- store throughput ------------------------------------------------------------------------------
    contents = [c for _, c in pairs]
    nbytes = sum(map(len, contents))
    cctx = zstd.ZstdCompressor(
        level=opts.level, dict_data=zstd.ZstdCompressionDict(ours), write_checksum=False
    )
    t0 = time.perf_counter()
    for c in contents:
        cctx.compress(c)
    t_raw = time.perf_counter() - t0
    store = ContentStore(work / "home")
    rows, put = store.put_many(unique, info.blake3, level=opts.level)
    assert put.written == len(pairs)
    print(f"raw zstandard compress loop:  {nbytes / 1e6 / t_raw:8.1f} MB/s ({t_raw:.3f} s)")
    print(
        f"store, compress + round trip: {nbytes / 1e6 / put.compress_seconds:8.1f} MB/s "
        f"({put.compress_seconds:.3f} s)  "
        f"ratio {nbytes / 1e6 / put.compress_seconds / (nbytes / 1e6 / t_raw):.2f}x"
        "   target >= 0.8x"
    )
    print(
        f"store, end to end (read, compress, verify, syncfs, rename): {put.mb_per_s:8.1f} MB/s "
        f"({put.seconds:.3f} s)  ratio {t_raw / put.seconds:.2f}x"
    )
    print(f"store ratio: {put.bytes_in / put.bytes_out:.3f}x over {put.written:,} objects")

    # --- frequent patterns -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    df, stats = find_patterns(root, manifest, PatternOptions(), work / "pattern-cache")
    t_pat = time.perf_counter() - t0
    print(
        f"frequent_patterns: {t_pat:.1f} s wall   target <= 60 s;  memory added (this process + workers) "
        f"{stats.peak_rss_mb:.0f} MiB   target <= 1024 MiB;  {stats.shards} shards, {stats.workers} workers, "
        f"{len(df)} patterns"
    )


if __name__ == "__main__":
    main()

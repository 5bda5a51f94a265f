"""Benchmark backups against `tar -I 'zstd -3'` over the same files.

Builds a home from standard-library packages (real store, tokenizer and Chroma; a hash embedder stands in
for the model, which does not change what is archived), promotes a golden copy, then prints in one run:
  * backup time against `tar -I 'zstd -3' -cf` over the same files (target <= 1.25x);
  * full-read verify time against `zstd -dc | tar -t` (reading the same archive);
  * restore-drill time.

Usage: python benchmarks/bench_backup.py [--packages email,json,...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nova_pipeline.core.protect import backup, golden  # noqa: E402
from nova_pipeline_tests.conftest import FakeEmbedder, build_home  # noqa: E402


def best_of(n, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--packages", default="email,json,http,logging,asyncio,xml,urllib,unittest,concurrent,importlib"
    )
    args = ap.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    try:
        src = work / "src"
        for pkg in args.packages.split(","):
            shutil.copytree(stdlib / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        home = work / "home"
        build_home(src, home)
        v = golden.promote(home, FakeEmbedder.fingerprint).version
        _, members = backup._members(home)
        nbytes = sum(p.stat().st_size for _, p in members)
        print(
            f"golden version {v.name}: {v.count:,} vectors; {len(members):,} files, "
            f"{nbytes:,} bytes to archive"
        )

        listing = work / "files.txt"
        listing.write_text("\n".join(str(p) for _, p in members) + "\n")
        tar_out = work / "tar.tar.zst"
        t_tar = best_of(
            3,
            lambda: subprocess.run(
                ["tar", "-I", "zstd -3", "-cf", str(tar_out), "-P", "-T", str(listing)], check=True
            ),
        )
        results = []
        t_ours = best_of(3, lambda: results.append(backup.create_backup(home, keep=10)))
        b = results[-1].info
        print(f"tar -I 'zstd -3': {t_tar:.3f} s ({tar_out.stat().st_size:,} bytes)")
        print(f"nova backup:      {t_ours:.3f} s ({b.size:,} bytes, blake3 of every member, manifest, fsync)")
        print(f"  backup / tar: {t_ours / t_tar:.2f}x   target <= 1.25x")
        t_tar_read = best_of(
            3, lambda: subprocess.run(f"zstd -dc {tar_out} | tar -t > /dev/null", shell=True, check=True)
        )
        t_verify = best_of(3, lambda: backup.verify_full(b))
        print(
            f"full-read verify: {t_verify:.3f} s vs `zstd -dc | tar -t` {t_tar_read:.3f} s "
            f"({t_verify / t_tar_read:.2f}x)"
        )
        t_drill = best_of(1, lambda: backup.restore_drill(home, b))
        print(
            f"restore drill (extract, open Chroma in a subprocess, verify {len(members):,} files): "
            f"{t_drill:.2f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

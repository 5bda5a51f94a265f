"""Frequent maximal repeats across a tree: "what repeats in my tree" (headers, boilerplate, vendored code).

Shards are chosen by the blake3 of each content's path (a fixed power-of-two number of buckets) and
analysed in worker processes (:mod:`.repeats`), so adding or editing a file changes one shard and the others
come from the cache.
The merged top candidates are then counted exactly over every unique content (non-overlapping occurrences,
``bytes.count``), which gives the reported ``frequency`` and ``file_count``; those counts are cached per shard
and pattern, so after an edit the unchanged shards count only the finalists that are new (the finalist set
moves by a few patterns), not all of them again. Identical files count once, as they are stored once.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import multiprocessing.context
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3
import numpy as np
import pandas as pd
import psutil

from nova_pipeline.core.atomic import atomic_write_with
from nova_pipeline.core.compression.repeats import (
    PatternOptions,
    analyse_shard,
    count_patterns,
    drop_redundant,
    score,
)
from nova_pipeline.core.errors import MemoryLimitError
from nova_pipeline.core.ingest.manifest import read_verified

__all__ = [
    "BYTES_PER_SHARD_BYTE",
    "PATTERN_COLUMNS",
    "PatternStats",
    "carry_timestamps",
    "display_pattern",
    "find_patterns",
    "inputs_digest",
    "pattern_sources",
    "plan_shards",
    "shard_key",
]

log = logging.getLogger(__name__)

PATTERN_COLUMNS = ["pattern", "frequency", "file_count", "first_seen", "last_updated"]

# Bytes of memory per byte of shard text: the text, the int32 suffix array and LCP array, their Python
# lists during the interval walk (measured: about 40 B per position at peak with the lists).
BYTES_PER_SHARD_BYTE = 48


@dataclass
class PatternStats:
    """Counts and timings of one analysis. Seconds are wall-clock; MB are 2^20 bytes."""

    contents: int = 0
    bytes: int = 0
    shards: int = 0
    shards_analysed: int = 0
    shards_cached: int = 0
    candidates: int = 0
    workers: int = 0
    peak_rss_mb: float = 0.0  # the most the analysis added: this process above its start, plus workers
    duration_seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)


def _shard_worker(items: list[tuple[str, str]], options: PatternOptions):
    pairs, skipped = read_verified(items)
    return analyse_shard([c for _, c in pairs], options), skipped


def _count_worker(items: list[tuple[str, str]], patterns: list[bytes]):
    pairs, skipped = read_verified(items)
    return count_patterns([c for _, c in pairs], patterns), skipped


def plan_shards(keys: Sequence[str], sizes: Sequence[int], shard_bytes: int) -> dict[int, list[int]]:
    """Assign contents to shards by a hex hash of each (:func:`shard_key`: of its path): ``{shard: [content
    index]}``.

    The shard count is a power of two, ``>= total / shard_bytes``, so it changes only when the corpus
    doubles or halves; a content's shard depends on its own key only.
    """
    total = sum(sizes)
    n = 1 << max(0, math.ceil(math.log2(max(1, total / max(1, shard_bytes)))))
    shards: dict[int, list[int]] = {}
    for idx, d in enumerate(keys):
        shards.setdefault(int(d[:8], 16) % n, []).append(idx)
    return shards


def shard_key(path: str) -> str:
    """The key that places a content in a shard: blake3 of the relative path of the first file that holds
    it. By path, not by content: an edited file's new content falls into the shard its old content left,
    so an edit analyses one shard again, not two (about 3 s of a one-file edit, at any tree size)."""
    return blake3.blake3(path.encode("utf-8", "surrogateescape")).hexdigest()


class _MemoryGuard:
    """Polls the memory the analysis adds: this process's RSS above its RSS at the start, plus the RSS of
    child processes that appeared since; raises MemoryLimitError past the limit."""

    def __init__(self, limit_mb: int):
        self.limit_mb = limit_mb
        self.proc = psutil.Process()
        self.base_rss = self.proc.memory_info().rss
        self.base_children = {c.pid for c in self.proc.children(recursive=True)}
        self.peak_mb = 0.0

    def check(self) -> None:
        rss = max(0, self.proc.memory_info().rss - self.base_rss)
        for child in self.proc.children(recursive=True):
            if child.pid in self.base_children:
                continue
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                pass
        mb = rss / 2**20  # (workers of the analysis: see stop_workers)
        self.peak_mb = max(self.peak_mb, mb)
        if mb > self.limit_mb:
            raise MemoryLimitError(
                f"frequent_patterns used {mb:.0f} MB, over memory_limit_mb={self.limit_mb}; "
                "raise memory_limit_mb, lower max_workers or shard_mb"
            )

    def stop_workers(self) -> None:
        """Kill the worker processes the analysis started, not multiprocessing's own helpers (the forkserver
        and the resource tracker serve the whole process, e.g. every step of an in-process run)."""
        me = os.getpid()
        for child in self.proc.children(recursive=True):
            if child.pid in self.base_children:
                continue
            try:
                cmd = " ".join(child.cmdline())
                if "resource_tracker" in cmd or (child.ppid() == me and "forkserver" in cmd):
                    continue
                child.kill()
            except psutil.Error:
                pass


def _mp_context() -> multiprocessing.context.BaseContext:
    """A forkserver context: libdivsufsort uses OpenMP, and GNU OpenMP hangs in a child forked after its
    thread pool started, so workers must come from a clean server process, not from a fork of this one."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["nova_pipeline.core.compression.patterns"])
    return ctx


def _run_pool(
    jobs: dict[object, tuple[Callable, tuple]],
    workers: int,
    guard: _MemoryGuard,
    on_done: Callable[[], None] | None = None,
) -> dict[object, object]:
    """Run ``{key: (fn, args)}`` in ``workers`` processes under the memory guard; ``on_done()`` after each."""
    results: dict[object, object] = {}
    if not jobs:
        return results
    if workers <= 1 or len(jobs) == 1:
        for key, (fn, args) in jobs.items():
            results[key] = fn(*args)
            guard.check()
            if on_done is not None:
                on_done()
        return results
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=_mp_context())
    try:
        futures: dict[Future, object] = {pool.submit(fn, *args): key for key, (fn, args) in jobs.items()}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            guard.check()
            for fut in done:
                results[futures[fut]] = fut.result()
                if on_done is not None:
                    on_done()
    except BaseException:
        guard.stop_workers()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def _shard_cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.json"


def _load_cached(path: Path) -> list[tuple[bytes, int]] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return [(bytes.fromhex(p), c) for p, c in raw["candidates"]]


def _save_cached(path: Path, candidates: list[tuple[bytes, int]]) -> None:
    body = json.dumps({"candidates": [(p.hex(), c) for p, c in candidates]}).encode()
    atomic_write_with(path, lambda fh: fh.write(body))


def inputs_digest(manifest: pd.DataFrame, options: PatternOptions) -> str:
    """What :func:`find_patterns` reads, as 32 hex digits: every option (the algorithm's version with them,
    :meth:`PatternOptions.cache_tag`) and the present files' ``(path, blake3, size)`` (each row hashed by
    pandas, vectorised, and sorted). An equal digest gives the same patterns, so an unchanged rebuild keeps
    the table without reading a shard cache: at 100,000 files the analysis of nothing new took 1.7-2.6 s,
    the exit 0.2-0.5 s."""
    live = manifest[manifest["status"] != "deleted"]
    h = blake3.blake3(f"{options.cache_tag()}\0{json.dumps(asdict(options), sort_keys=True)}".encode())
    rows = pd.util.hash_pandas_object(live[["path", "blake3", "size"]], index=False).to_numpy()
    h.update(np.sort(rows).tobytes())
    return h.hexdigest()[:32]


def find_patterns(
    root: Path,
    manifest: pd.DataFrame,
    options: PatternOptions,
    cache_dir: Path,
    previous: pd.DataFrame | None = None,
    now: pd.Timestamp | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, PatternStats]:
    """Frequent maximal repeats of the present files of ``manifest``.

    Args:
        root: the source tree the manifest paths are relative to.
        manifest: the ``source_files`` manifest.
        options: see :class:`PatternOptions`.
        cache_dir: where per-shard results are cached, keyed by blake3 of the shard's content hashes.
        previous: the previous result, whose ``first_seen`` (and unchanged ``last_updated``) carry over.
        now: the timestamp for new rows (UTC; default: now).
        progress: called as ``progress(done, total)`` as shards are analysed and recounted.

    Returns:
        A DataFrame with :data:`PATTERN_COLUMNS` (``pattern`` is bytes; timestamps are UTC), best first,
        and the stats.

    Raises:
        MemoryLimitError: the analysis would exceed, or exceeded, ``memory_limit_mb``.
    """
    started = time.perf_counter()
    now = now or pd.Timestamp.now(tz="UTC")
    stats = PatternStats()
    live = manifest[manifest["status"] != "deleted"].drop_duplicates("blake3")
    digests = live["blake3"].tolist()
    sizes = live["size"].tolist()
    # joined as strings: a Path per file cost 0.22 s of a 0.58 s unchanged run at 10,000 files
    prefix = os.path.join(str(root), "")
    paths = [prefix + p for p in live["path"].tolist()]
    stats.contents, stats.bytes = len(digests), int(sum(sizes))

    workers = options.max_workers or os.cpu_count() or 1
    guard = _MemoryGuard(options.memory_limit_mb)
    budget_mb = options.memory_limit_mb - 64 * workers  # about 64 MB per worker before it holds a shard
    budget_shard = int(budget_mb * 2**20 / max(1, workers) / BYTES_PER_SHARD_BYTE)
    largest = max(sizes, default=0)
    if budget_shard < max(largest, 64 * 1024):
        raise MemoryLimitError(
            f"memory_limit_mb={options.memory_limit_mb} leaves {budget_mb:.0f} MB for {workers} workers, "
            f"too little for a shard of {max(largest, 64 * 1024):,} bytes; raise memory_limit_mb or "
            "lower max_workers"
        )
    shard_bytes = max(1, min(int(options.shard_mb * 2**20), budget_shard))
    shards = plan_shards([shard_key(p) for p in live["path"].tolist()], sizes, shard_bytes)
    stats.shards, stats.workers = len(shards), workers

    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = options.cache_tag()
    shard_items: dict[int, list[tuple[str, str]]] = {}
    shard_keys: dict[int, str] = {}
    candidates: dict[int, list[tuple[bytes, int]]] = {}
    jobs: dict[object, tuple[Callable, tuple]] = {}
    for sid, idxs in shards.items():
        idxs = sorted(idxs, key=lambda i: digests[i])
        shard_items[sid] = [(paths[i], digests[i]) for i in idxs]
        key = blake3.blake3((tag + "|" + ",".join(digests[i] for i in idxs)).encode()).hexdigest()
        shard_keys[sid] = key
        cached = _load_cached(_shard_cache_path(cache_dir, key))
        if cached is not None:
            candidates[sid] = cached
            stats.shards_cached += 1
        else:
            jobs[sid] = (_shard_worker, (shard_items[sid], options))
    skipped = 0
    done = [0]
    total = len(jobs) + len(shards)  # shards to analyse, then every shard's exact recount

    def on_done() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    for sid, (cands, nskip) in _run_pool(jobs, workers, guard, on_done).items():
        candidates[sid] = cands
        skipped += nskip
        stats.shards_analysed += 1
        if nskip == 0:  # a shard read with files missing must not be cached as complete
            _save_cached(_shard_cache_path(cache_dir, shard_keys[sid]), cands)

    merged: dict[bytes, int] = {}
    for cands in candidates.values():
        for p, c in cands:
            merged[p] = merged.get(p, 0) + c
    stats.candidates = len(merged)
    ranked = sorted(merged, key=lambda p: (-score(merged[p], p), p))[: options.top_k * 5]

    # Exact counts of the finalists over every content, per shard, cached by shard and pattern: a finalist
    # set that changed by a few patterns (an edit) counts only those over the unchanged shards.
    counts = np.zeros((len(ranked), 2), dtype=np.int64)
    index = {p: i for i, p in enumerate(ranked)}
    known: dict[int, dict[bytes, tuple[int, int]]] = {}
    count_jobs: dict[object, tuple[Callable, tuple]] = {}
    missing: dict[int, list[bytes]] = {}
    for sid, items in shard_items.items():
        known[sid] = _load_counts(cache_dir / f"{shard_keys[sid]}.counts.json")
        missing[sid] = [p for p in ranked if p not in known[sid]]
        if missing[sid]:
            count_jobs[sid] = (_count_worker, (items, missing[sid]))
    done[0] += len(shards) - len(count_jobs)  # recounts found in the cache
    for sid, (shard_counts, nskip) in _run_pool(count_jobs, workers, guard, on_done).items():
        known[sid].update(zip(missing[sid], (tuple(c) for c in shard_counts)))
        skipped += nskip
        if nskip == 0:
            _save_counts(cache_dir / f"{shard_keys[sid]}.counts.json", {p: known[sid][p] for p in ranked})
    for sid in shard_items:
        for p, i in index.items():
            counts[i] += known[sid][p]
    if skipped:
        stats.skipped = {"changed_or_vanished_since_scan": skipped}

    rows = [(p, int(f), int(fc)) for p, (f, fc) in zip(ranked, counts.tolist()) if f >= options.min_frequency]
    rows.sort(key=lambda r: (-score(r[1], r[0]), r[0]))
    rows = drop_redundant(rows)[: options.top_k]
    df = pd.DataFrame(rows, columns=["pattern", "frequency", "file_count"])
    df["frequency"] = df["frequency"].astype("int64")
    df["file_count"] = df["file_count"].astype("int64")
    df = carry_timestamps(df, previous, now)
    _prune_cache(cache_dir, set(shard_keys.values()))
    stats.peak_rss_mb = guard.peak_mb
    stats.duration_seconds = time.perf_counter() - started
    log.info("frequent_patterns: %s", asdict(stats))
    return df, stats


def carry_timestamps(df: pd.DataFrame, previous: pd.DataFrame | None, now: pd.Timestamp) -> pd.DataFrame:
    """Add ``first_seen`` (kept from ``previous``) and ``last_updated`` (kept while the counts are equal).

    Both columns are UTC timestamps (``datetime64[us, UTC]``).
    """
    now = pd.Timestamp(now).tz_convert("UTC") if pd.Timestamp(now).tzinfo else pd.Timestamp(now, tz="UTC")
    first = [now] * len(df)
    last = [now] * len(df)
    if previous is not None and len(previous):
        prev = {
            bytes(p): (pd.Timestamp(fs), pd.Timestamp(lu), int(f), int(fc))
            for p, fs, lu, f, fc in zip(
                previous["pattern"],
                previous["first_seen"],
                previous["last_updated"],
                previous["frequency"],
                previous["file_count"],
            )
        }
        for i, (p, f, fc) in enumerate(zip(df["pattern"], df["frequency"], df["file_count"])):
            old = prev.get(bytes(p))
            if old is not None:
                first[i] = old[0]
                if (old[2], old[3]) == (int(f), int(fc)):
                    last[i] = old[1]
    out = df.copy()
    out["first_seen"] = pd.to_datetime(pd.Series(first, dtype=object), utc=True).astype("datetime64[us, UTC]")
    last_updated = pd.to_datetime(pd.Series(last, dtype=object), utc=True)
    out["last_updated"] = last_updated.astype("datetime64[us, UTC]")
    return out[PATTERN_COLUMNS]


def _load_counts(path: Path) -> dict[bytes, tuple[int, int]]:
    """A shard's cached ``{pattern: (frequency, file_count)}`` (empty when there is none, or it is
    unreadable: the patterns are counted again)."""
    try:
        raw = json.loads(path.read_text())
        return {bytes.fromhex(k): (int(v[0]), int(v[1])) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return {}


def _save_counts(path: Path, counts: dict[bytes, tuple[int, int]]) -> None:
    body = json.dumps({p.hex(): list(c) for p, c in counts.items()}).encode()
    atomic_write_with(path, lambda fh: fh.write(body))


def _prune_cache(cache_dir: Path, live_keys: set[str]) -> None:
    """Drop cache files of shards that no longer exist."""
    for f in cache_dir.iterdir():
        if f.name.split(".", 1)[0] not in live_keys:
            try:
                f.unlink()
            except OSError:
                pass


def display_pattern(pattern: bytes, width: int = 60) -> str:
    """A pattern escaped and shortened for a Markdown table cell."""
    text = pattern.decode("utf-8", errors="backslashreplace")
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    text = text.replace("|", "\\|").replace("`", "'")
    if len(text) > width:
        text = text[: width - 1] + "…"
    return f"`{text}`"


def pattern_sources(
    root: Path, manifest: pd.DataFrame, patterns: Sequence[bytes], max_files: int = 3
) -> list[list[str]]:
    """For each pattern, up to ``max_files`` paths of the manifest whose content contains it."""
    live = manifest[manifest["status"] != "deleted"]
    found: list[list[str]] = [[] for _ in patterns]
    for rel in live["path"].tolist():
        if all(len(f) >= max_files for f in found):
            break
        try:
            data = (Path(root) / rel).read_bytes()
        except OSError:
            continue
        for i, p in enumerate(patterns):
            if len(found[i]) < max_files and p in data:
                found[i].append(rel)
    return found

"""Frequent maximal repeats across a tree: "what repeats in my tree" (headers, boilerplate, vendored code).

Algorithm (per shard, in worker processes):

1. The shard's unique file contents are joined with NUL separators (text files hold no NUL: the scan
   skips those as binary) and indexed with a suffix array and its LCP array (libdivsufsort via pydivsufsort,
   LCP by Kasai et al. 2001).
2. LCP intervals are enumerated bottom-up with a stack (Abouelhoda, Kurtz & Ohlebusch, "Replacing suffix
   trees with enhanced suffix arrays", J. Discrete Algorithms 2004). An interval of depth ``h`` and width
   ``w`` is a substring of length ``h`` occurring ``w`` times that is *right-maximal*; it is kept only when
   it is also *left-maximal* (its occurrences are not all preceded by the same byte), so a repeated
   300-byte header is one pattern, not hundreds of overlapping n-grams.
3. Candidates are ranked by :func:`score`, ``(frequency - 1) * length**2``, and the best ``4 * top_k``
   of each shard are kept.

Shards are chosen by the blake3 of each content (a fixed power-of-two number of buckets), so adding a file
changes one shard and the others come from the cache. The merged top candidates are then counted exactly
over every unique content (non-overlapping occurrences, ``bytes.count``), which gives the reported
``frequency`` and ``file_count``. Identical files count once, as they are stored once.
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
from nova_pipeline.core.errors import MemoryLimitError
from nova_pipeline.core.scanning import read_verified

log = logging.getLogger(__name__)

PATTERN_COLUMNS = ["pattern", "frequency", "file_count", "first_seen", "last_updated"]
SEPARATOR = b"\x00"
# Bytes of memory per byte of shard text: the text, the int32 suffix array and LCP array, their Python
# lists during the interval walk (measured: about 40 B per position at peak with the lists).
BYTES_PER_SHARD_BYTE = 48
ALGORITHM_VERSION = "lcp-intervals-v1"


@dataclass(frozen=True)
class PatternOptions:
    """Settings of the pattern analysis.

    Attributes:
        min_length: shortest pattern, bytes.
        max_length: longest pattern, bytes; longer repeats are cut to this length.
        min_frequency: fewest occurrences for a pattern to count.
        top_k: patterns reported.
        max_workers: worker processes (default: every core).
        memory_limit_mb: the memory the analysis adds (this process's RSS above what it was when the
            analysis started, plus its worker processes) stays under this, or it stops with
            :class:`MemoryLimitError`. Memory the process held before (other steps of an in-process run,
            a loaded model) does not count.
        shard_mb: target shard size; lowered automatically to fit ``memory_limit_mb``.
    """

    min_length: int = 8
    max_length: int = 512
    min_frequency: int = 2
    top_k: int = 100
    max_workers: int = 0
    memory_limit_mb: int = 1024
    shard_mb: float = 4.0

    def cache_tag(self) -> str:
        """What a cached shard result depends on besides its contents."""
        return f"{ALGORITHM_VERSION}:{self.min_length}:{self.max_length}:{self.min_frequency}:{self.top_k}"


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


# --------------------------------------------------------------------------------------------------------
# The per-shard analysis (runs in worker processes)


def suffix_structures(text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Suffix array and LCP array of ``text`` (``lcp[i]`` = LCP of suffixes ``sa[i]`` and ``sa[i+1]``)."""
    from pydivsufsort import divsufsort, kasai

    sa = divsufsort(text)
    lcp = kasai(text, sa)
    return sa, lcp


def _intervals(text: bytes, sa: np.ndarray, lcp: np.ndarray, min_length: int, min_frequency: int):
    """Enumerate reportable LCP intervals; see the module docstring. Returns (depth, lb, rb) arrays."""
    n = len(sa)
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    h_all = lcp[: n - 1].astype(np.int64)
    h_all[h_all < min_length] = 0
    # The byte before each suffix: -1 (a unique marker) at the start of the text or after a separator.
    prev = np.frombuffer(text, dtype=np.uint8).astype(np.int16)
    before = np.where(sa > 0, prev[np.maximum(sa - 1, 0)], -1)
    before[before == SEPARATOR[0]] = -1
    # Only runs of positive (clipped) LCP hold intervals; walk each run separately.
    positive = h_all > 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], positive.view(np.int8), [0]))))
    starts, ends = edges[0::2], edges[1::2]  # suffixes starts[j] .. ends[j] (inclusive) form a run
    out_h: list[int] = []
    out_lb: list[int] = []
    out_rb: list[int] = []
    EMPTY, DIVERSE = -2, -1
    for s, e in zip(starts.tolist(), ends.tolist()):
        hs = h_all[s:e].tolist()
        hs.append(0)
        cs = before[s : e + 1].tolist()
        # stack entries: [depth, lb, left-byte state]
        stack = [[0, s, EMPTY]]
        for k, h in enumerate(hs):
            i = s + k
            c = cs[k]
            top = stack[-1]
            st = top[2]
            top[2] = c if st == EMPTY or st == c else DIVERSE
            lb = i
            popped_state = None
            while h < stack[-1][0]:
                depth, lb, state = stack.pop()
                if state == DIVERSE and i - lb + 1 >= min_frequency:
                    out_h.append(depth)
                    out_lb.append(lb)
                    out_rb.append(i)
                parent = stack[-1]
                ps = parent[2]
                parent[2] = state if ps == EMPTY or ps == state else DIVERSE
                popped_state = state
            if h > stack[-1][0]:
                stack.append([h, lb, popped_state if popped_state is not None else c])
    return (np.asarray(out_h, dtype=np.int64), np.asarray(out_lb, dtype=np.int64),
            np.asarray(out_rb, dtype=np.int64))


def score(frequency: int, pattern: bytes) -> int:
    """Rank of a pattern: ``(frequency - 1) * length**2``.

    Squaring the length puts long repeats (license headers, boilerplate blocks, vendored copies) above
    short idioms such as ``"        return "``, which repeat thousands of times but say little about a tree.
    """
    return (frequency - 1) * len(pattern) ** 2


def drop_redundant(rows: list[tuple[bytes, int, int]], factor: float = 1.5) -> list[tuple[bytes, int, int]]:
    """Drop a ``(pattern, frequency, file_count)`` row that overlaps a better-ranked kept one.

    A pattern inside a kept pattern (or containing one) whose frequency is within ``factor`` of it adds
    nothing to the report: it is the same repeat, seen through a shorter or longer window.
    """
    kept: list[tuple[bytes, int, int]] = []
    for row in rows:
        p, f = row[0], row[1]
        if any((p in k or k in p) and f < factor * kf and kf < factor * f for k, kf, _ in kept):
            continue
        kept.append(row)
    return kept


def _mostly_whitespace(pattern: bytes) -> bool:
    return len(pattern.strip()) < max(4, len(pattern) // 4)


def analyse_shard(contents: Sequence[bytes], options: PatternOptions) -> list[tuple[bytes, int]]:
    """Top candidate patterns of one shard: ``[(pattern, occurrences in the shard)]``, best first.

    Patterns that are mostly whitespace (indentation runs) are dropped: they say nothing about the tree.
    """
    text = SEPARATOR.join(contents)
    if len(text) < options.min_length * 2:
        return []
    sa, lcp = suffix_structures(text)
    depth, lb, rb = _intervals(text, sa, lcp, options.min_length, options.min_frequency)
    if len(depth) == 0:
        return []
    length = np.minimum(depth, options.max_length)
    count = rb - lb + 1
    score = (count - 1) * length * length
    keep = max(options.top_k * 4, 50)
    order = np.argsort(-score, kind="stable")
    out: list[tuple[bytes, int]] = []
    seen: set[bytes] = set()
    for j in order.tolist():
        start = int(sa[lb[j]])
        pattern = text[start : start + int(length[j])]
        if SEPARATOR in pattern or pattern in seen or _mostly_whitespace(pattern):
            continue
        seen.add(pattern)
        out.append((pattern, int(count[j])))
        if len(out) >= keep:
            break
    return out


def count_patterns(contents: Sequence[bytes], patterns: Sequence[bytes]) -> list[tuple[int, int]]:
    """Exact ``(non-overlapping occurrences, contents containing it)`` of each pattern over ``contents``."""
    result = []
    for p in patterns:
        freq = files = 0
        for c in contents:
            k = c.count(p)
            if k:
                freq += k
                files += 1
        result.append((freq, files))
    return result


def _shard_worker(items: list[tuple[str, str]], options: PatternOptions):
    pairs, skipped = read_verified(items)
    return analyse_shard([c for _, c in pairs], options), skipped


def _count_worker(items: list[tuple[str, str]], patterns: list[bytes]):
    pairs, skipped = read_verified(items)
    return count_patterns([c for _, c in pairs], patterns), skipped


# --------------------------------------------------------------------------------------------------------
# Orchestration (the calling process)


def plan_shards(
    digests: Sequence[str], sizes: Sequence[int], shard_bytes: int
) -> dict[int, list[int]]:
    """Assign contents to shards by their blake3: ``{shard: [content index]}``.

    The shard count is a power of two, ``>= total / shard_bytes``, so it changes only when the corpus
    doubles or halves; a content's shard depends on its own hash only.
    """
    total = sum(sizes)
    n = 1 << max(0, math.ceil(math.log2(max(1, total / max(1, shard_bytes)))))
    shards: dict[int, list[int]] = {}
    for idx, d in enumerate(digests):
        shards.setdefault(int(d[:8], 16) % n, []).append(idx)
    return shards


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
    ctx.set_forkserver_preload(["nova_pipeline.core.patterns"])
    return ctx


def _run_pool(
    jobs: dict[object, tuple[Callable, tuple]], workers: int, guard: _MemoryGuard,
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
    paths = [str(Path(root) / p) for p in live["path"].tolist()]
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
    shards = plan_shards(digests, sizes, shard_bytes)
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

    # Exact counts of the finalists over every content, per shard (cached by shard and finalist set).
    finalists_key = blake3.blake3(b"\x00".join(ranked)).hexdigest()[:16]
    counts = np.zeros((len(ranked), 2), dtype=np.int64)
    count_jobs: dict[object, tuple[Callable, tuple]] = {}
    for sid, items in shard_items.items():
        path = cache_dir / f"{shard_keys[sid]}.counts-{finalists_key}.json"
        try:
            counts += np.asarray(json.loads(path.read_text()), dtype=np.int64).reshape(-1, 2)
        except (OSError, ValueError):
            count_jobs[sid] = (_count_worker, (items, ranked))
    done[0] += len(shards) - len(count_jobs)  # recounts found in the cache
    for sid, (shard_counts, nskip) in _run_pool(count_jobs, workers, guard, on_done).items():
        arr = np.asarray(shard_counts, dtype=np.int64).reshape(-1, 2)
        counts += arr
        skipped += nskip
        if nskip == 0:
            body = json.dumps(arr.tolist()).encode()
            atomic_write_with(cache_dir / f"{shard_keys[sid]}.counts-{finalists_key}.json",
                              lambda fh, b=body: fh.write(b))
    if skipped:
        stats.skipped = {"changed_or_vanished_since_scan": skipped}

    rows = [
        (p, int(f), int(fc))
        for p, (f, fc) in zip(ranked, counts.tolist())
        if f >= options.min_frequency
    ]
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
            for p, fs, lu, f, fc in zip(previous["pattern"], previous["first_seen"],
                                        previous["last_updated"], previous["frequency"],
                                        previous["file_count"])
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

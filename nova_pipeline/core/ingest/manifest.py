"""Incremental, content-addressed scan of a source tree into a manifest.

The manifest is a DataFrame with one row per file, columns :data:`MANIFEST_COLUMNS`:

=========  ======  ==================================================================
path       str     POSIX path relative to the scanned root
size       int64   bytes
mtime_ns   int64   modification time, nanoseconds since the epoch
blake3     str     64 hex characters, blake3 of the file's bytes
language   str     from the file name (:mod:`.languages`), ``text`` otherwise
status     str     ``added``, ``changed``, ``unchanged`` or ``deleted`` against the
                   previous manifest
=========  ======  ==================================================================

A file is re-hashed only when its size or mtime differs from the previous manifest, which is the rule git
uses for its index ("racy git" aside, see ``Documentation/technical/racy-git.txt`` in git).
Binary detection follows git's ``buffer_is_binary``: a NUL byte in the first 8,000 bytes.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pandas as pd

from nova_pipeline.core.errors import ScanError
from nova_pipeline.core.ingest.languages import language_of
from nova_pipeline.core.ingest.walk import ScanOptions, WalkReport, walk

__all__ = [
    "ADDED",
    "BINARY_SNIFF_BYTES",
    "CHANGED",
    "DELETED",
    "HASH_BATCH_FILES",
    "MANIFEST_COLUMNS",
    "PARALLEL_MIN_BYTES",
    "STATUSES",
    "STREAM_BLOCK",
    "STREAM_THRESHOLD",
    "UNCHANGED",
    "ScanResult",
    "ScanStats",
    "present_files",
    "read_verified",
    "scan",
    "unique_contents",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["path", "size", "mtime_ns", "blake3", "language", "status"]

ADDED, CHANGED, UNCHANGED, DELETED = "added", "changed", "unchanged", "deleted"

STATUSES = (ADDED, CHANGED, UNCHANGED, DELETED)

BINARY_SNIFF_BYTES = 8000  # git's FIRST_FEW_BYTES in xdiff-interface.c

STREAM_THRESHOLD = 8 * 1024 * 1024  # files above this are hashed in blocks with blake3's own threads

STREAM_BLOCK = 1024 * 1024

# below this, starting worker processes costs more than it saves (bench_scan)
PARALLEL_MIN_BYTES = 64 * 1024 * 1024

HASH_BATCH_FILES = 64


@dataclass
class ScanStats:
    """Counts and timings of one scan. Bytes are bytes; seconds are wall-clock seconds."""

    files: int = 0
    bytes: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    skipped: collections.Counter = field(default_factory=collections.Counter)
    ignored_dirs: dict[str, str] = field(default_factory=dict)  # "path/" -> the rule that ignored it
    ignored_files: collections.Counter = field(default_factory=collections.Counter)  # rule -> files
    files_hashed: int = 0
    bytes_hashed: int = 0
    hash_seconds: float = 0.0
    duration_seconds: float = 0.0

    @property
    def ignored(self) -> int:
        """Directories and files left out by ignore rules, in all."""
        return len(self.ignored_dirs) + sum(self.ignored_files.values())

    @property
    def hash_mb_per_s(self) -> float:
        """Hashing throughput in MB/s (10^6 bytes), over the time spent reading and hashing only."""
        return self.bytes_hashed / 1e6 / self.hash_seconds if self.hash_seconds > 0 else 0.0


@dataclass
class ScanResult:
    """A manifest (see module docstring), the stats of the scan, and the binary files it found.

    ``binaries`` has columns ``path, size, mtime_ns``; passed back to the next :func:`scan`, it spares
    re-reading binary files whose size and mtime did not change.
    """

    manifest: pd.DataFrame
    stats: ScanStats
    binaries: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "size", "mtime_ns"]))

    def language_table(self) -> pd.DataFrame:
        """Files and bytes by language over present (non-deleted) files, largest first."""
        present = self.manifest[self.manifest["status"] != DELETED]
        table = present.groupby("language").agg(files=("path", "size"), bytes=("size", "sum"))
        return table.sort_values("bytes", ascending=False).reset_index()


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _read_and_hash(path: str, size: int, max_size: int) -> tuple[str, int]:
    """blake3 hex digest and byte count of a file, refusing binary and oversized content.

    ``size`` is the size from the walk's stat: a file up to 8,000 bytes is read with one ``os.read`` of
    ``size + 1`` bytes (the extra byte detects growth); a larger one gets a sniff of its first 8,000 bytes
    first, so a binary file is never read whole; above :data:`STREAM_THRESHOLD` it is hashed in blocks
    with blake3's own threads.

    Raises:
        _Skip: ``binary`` or ``too_large``.
        OSError: the file vanished or cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if size < BINARY_SNIFF_BYTES:
            data = os.read(fd, size + 1)
            if len(data) <= size:  # the common case: the whole file in one read
                if b"\0" in data:
                    raise _Skip("binary")
                return blake3.blake3(data).hexdigest(), len(data)
            head = data + os.read(fd, BINARY_SNIFF_BYTES - len(data))  # it grew since the stat
        else:
            head = os.read(fd, BINARY_SNIFF_BYTES)
        if b"\0" in head[:BINARY_SNIFF_BYTES]:
            raise _Skip("binary")
        hasher = blake3.blake3(head, max_threads=blake3.blake3.AUTO if size > STREAM_THRESHOLD else 1)
        total = len(head)
        block_size = max(size - total + 1, 1) if size <= STREAM_THRESHOLD else STREAM_BLOCK
        while block := os.read(fd, block_size):
            hasher.update(block)
            total += len(block)
            if total > max_size:
                raise _Skip("too_large")
            block_size = STREAM_BLOCK
        return hasher.hexdigest(), total
    finally:
        os.close(fd)


def _hash_batch(items: list[tuple[str, int]], max_size: int) -> list[tuple[str, object, object]]:
    """Hash a batch of ``(path, stat size)``; one ``(kind, a, b)`` outcome each, picklable for a worker
    process.

    ``("ok", digest, size)``, ``("skip", reason, None)``, ``("vanished", None, None)`` or
    ``("error", message, errno)``.
    """
    out: list[tuple[str, object, object]] = []
    for path, stat_size in items:
        try:
            digest, size = _read_and_hash(path, stat_size, max_size)
        except _Skip as skip:
            out.append(("skip", skip.reason, None))
        except FileNotFoundError:
            out.append(("vanished", None, None))
        except OSError as exc:
            out.append(("error", str(exc), exc.errno))
        else:
            out.append(("ok", digest, size))
    return out


def _previous_index(previous: pd.DataFrame | None) -> dict[str, tuple[int, int, str, str]]:
    """``path -> (size, mtime_ns, blake3, language)`` for the present files of a previous manifest."""
    if previous is None or previous.empty:
        return {}
    live = previous[previous["status"] != DELETED]
    return dict(
        zip(
            live["path"].tolist(),
            zip(
                live["size"].tolist(),
                live["mtime_ns"].tolist(),
                live["blake3"].tolist(),
                live["language"].tolist(),
            ),
        )
    )


def scan(
    options: ScanOptions,
    previous: pd.DataFrame | None = None,
    workers: int | None = None,
    known_binaries: pd.DataFrame | None = None,
    progress: Callable[..., None] | None = None,
) -> ScanResult:
    """Scan ``options.root`` into a manifest, re-hashing only files whose size or mtime changed.

    Hashing runs inline for small amounts of work; past :data:`PARALLEL_MIN_BYTES` it moves to ``workers``
    processes (default: every core) fed in batches while the walk goes on, because blake3 holds the GIL
    on small inputs and threads do not help.

    Args:
        options: root, size limit and ignore patterns.
        previous: the manifest of the previous scan, or ``None`` for a cold scan.
        workers: hashing processes; ``1`` hashes inline.
        known_binaries: ``ScanResult.binaries`` of the previous scan; such files are skipped again without
            being read when their size and mtime are unchanged.
        progress: called as ``progress(files_hashed, files_to_hash, bytes_hashed, bytes_to_hash)`` after
            each batch of files is hashed.

    Returns:
        A :class:`ScanResult`; its manifest is sorted by path and includes ``deleted`` rows for files
        of ``previous`` that are gone.

    Raises:
        ScanError: the root does not exist, is not a directory, or cannot be listed.
    """
    started = time.perf_counter()
    root = Path(options.root)
    if not root.is_dir():
        raise ScanError(f"source directory {root} does not exist or is not a directory; set NOVA_SOURCE_DIR")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ScanError(f"source directory {root} is not readable; fix its permissions or NOVA_SOURCE_DIR")
    workers = workers or os.cpu_count() or 1

    prev = _previous_index(previous)
    binaries_before: dict[str, tuple[int, int]] = {}
    if known_binaries is not None and len(known_binaries):
        binaries_before = dict(
            zip(
                known_binaries["path"].tolist(),
                zip(known_binaries["size"].tolist(), known_binaries["mtime_ns"].tolist()),
            )
        )
    binaries: list[tuple[str, int, int]] = []
    stats = ScanStats()
    rows: list[tuple[str, int, int, str, str, str]] = []
    pending: list[tuple[str, str, int, int, tuple | None]] = []  # (rel, abs, size, mtime_ns, previous)
    pending_bytes = 0
    batches: list[tuple[list, Future]] = []
    pool: ProcessPoolExecutor | None = None
    hash_started: float | None = None

    def submit(batch: list) -> None:
        batches.append(
            (batch, pool.submit(_hash_batch, [(b[1], b[2]) for b in batch], options.max_file_size))
        )

    try:
        for rel, abs_path, st in itertools.chain.from_iterable(
            walk(options, WalkReport(stats.ignored_dirs, stats.ignored_files, stats.skipped))
        ):
            old = prev.get(rel)
            if old is not None and old[0] == st.st_size and old[1] == st.st_mtime_ns:
                rows.append((rel, st.st_size, st.st_mtime_ns, old[2], old[3], UNCHANGED))
                continue
            if binaries_before.get(rel) == (st.st_size, st.st_mtime_ns):
                stats.skipped["binary"] += 1
                binaries.append((rel, st.st_size, st.st_mtime_ns))
                continue
            if st.st_size > options.max_file_size:
                stats.skipped["too_large"] += 1
                log.info("skipped %s (too_large): %d bytes > %d", rel, st.st_size, options.max_file_size)
                continue
            pending.append((rel, abs_path, st.st_size, st.st_mtime_ns, old))
            pending_bytes += st.st_size
            if pool is None and workers > 1 and pending_bytes >= PARALLEL_MIN_BYTES:
                hash_started = time.perf_counter()
                pool = ProcessPoolExecutor(workers)
            if pool is not None and len(pending) >= HASH_BATCH_FILES:
                submit(pending)
                pending = []
        if hash_started is None:
            hash_started = time.perf_counter()
        if pool is not None and pending:
            submit(pending)
        elif pool is None:
            step = HASH_BATCH_FILES
            batches = [(pending[i : i + step], None) for i in range(0, len(pending), step)]
        total_files = sum(len(b) for b, _ in batches)
        total_bytes = sum(p[2] for b, _ in batches for p in b)
        outcomes, done_files, done_bytes = [], 0, 0
        for batch, fut in batches:
            result = (
                fut.result()
                if fut is not None
                else _hash_batch([(p[1], p[2]) for p in batch], options.max_file_size)
            )
            outcomes.append((batch, result))
            done_files += len(batch)
            done_bytes += sum(p[2] for p in batch)
            if progress is not None:
                progress(done_files, total_files, done_bytes, total_bytes)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    # reached only when the walk and the hashing succeeded: a failure above propagates as itself
    stats.hash_seconds = time.perf_counter() - hash_started if hash_started is not None else 0.0

    for batch, results in outcomes:
        for (rel, _abs, stat_size, mtime, old), (kind, a, b) in zip(batch, results):
            if kind == "ok":
                digest, size = a, b
                stats.files_hashed += 1
                stats.bytes_hashed += size
                status = ADDED if old is None else (UNCHANGED if old[2] == digest else CHANGED)
                lang = old[3] if status == UNCHANGED else language_of(rel)
                rows.append((rel, size, mtime, digest, lang, status))
            elif kind == "skip":
                stats.skipped[a] += 1
                if a == "binary":
                    binaries.append((rel, stat_size, mtime))
                log.log(logging.DEBUG if a == "binary" else logging.INFO, "skipped %s (%s)", rel, a)
            elif kind == "vanished":
                stats.skipped["vanished"] += 1
                log.warning("skipped %s (vanished): it disappeared during the scan", rel)
            else:
                stats.skipped["unreadable"] += 1
                if old is None:
                    log.warning("skipped %s (unreadable): %s", rel, a)
                    continue
                # Keep what we knew rather than reporting a transiently unreadable file as deleted.
                log.warning("kept the previous entry of %s: it is unreadable now (%s)", rel, a)
                rows.append((rel, old[0], old[1], old[2], old[3], UNCHANGED))

    if (
        previous is not None
        and stats.files_hashed == 0
        and len(rows) == len(prev)
        and all(r[5] == UNCHANGED for r in rows)
    ):
        # Nothing changed (every present file matched the previous manifest, none is gone): reuse its columns.
        manifest = previous[previous["status"] != DELETED].reset_index(drop=True)
        manifest = manifest.assign(status=pd.array([UNCHANGED] * len(manifest), dtype="str"))[
            MANIFEST_COLUMNS
        ]
    else:
        seen = {r[0] for r in rows}
        for rel, (size, mtime, digest, lang) in prev.items():
            if rel not in seen:
                rows.append((rel, size, mtime, digest, lang, DELETED))
        rows.sort()
        cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in MANIFEST_COLUMNS]
        manifest = pd.DataFrame(
            {
                "path": pd.array(cols[0], dtype="str"),
                "size": pd.array(cols[1], dtype="int64"),
                "mtime_ns": pd.array(cols[2], dtype="int64"),
                "blake3": pd.array(cols[3], dtype="str"),
                "language": pd.array(cols[4], dtype="str"),
                "status": pd.array(cols[5], dtype="str"),
            }
        )
    present = manifest["status"] != DELETED
    stats.files = int(present.sum())
    stats.bytes = int(manifest.loc[present, "size"].sum())
    counts = manifest["status"].value_counts()
    stats.status_counts = {s: int(counts.get(s, 0)) for s in STATUSES}
    stats.duration_seconds = time.perf_counter() - started
    log.info(
        "scanned %s: %d files, %d bytes, %s, %d bytes re-hashed, skipped %s, ignored %d dirs and %d files",
        root,
        stats.files,
        stats.bytes,
        stats.status_counts,
        stats.bytes_hashed,
        dict(stats.skipped),
        len(stats.ignored_dirs),
        sum(stats.ignored_files.values()),
    )
    return ScanResult(
        manifest=manifest,
        stats=stats,
        binaries=pd.DataFrame(binaries, columns=["path", "size", "mtime_ns"]).astype(
            {"size": "int64", "mtime_ns": "int64"}
        ),
    )


def present_files(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows of a manifest whose file exists (status other than ``deleted``)."""
    return manifest[manifest["status"] != DELETED]


def read_verified(
    items: Iterable[tuple[str, str]], budget: int | None = None
) -> tuple[list[tuple[str, bytes]], int]:
    """Read ``(path, blake3)`` items, dropping files that vanished, became unreadable or changed since the
    scan.

    Args:
        items: absolute paths with the blake3 the manifest recorded.
        budget: stop once this many bytes were read (None: read all).

    Returns:
        ``(pairs, skipped)``: ``(blake3, content)`` of the verified items in order, and how many were dropped.
    """
    out: list[tuple[str, bytes]] = []
    skipped = total = 0
    for path, digest in items:
        if budget is not None and total >= budget:
            break
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            skipped += 1
            continue
        if blake3.blake3(data).hexdigest() != digest:
            skipped += 1
            continue
        out.append((digest, data))
        total += len(data)
    return out, skipped


def unique_contents(root: Path, manifest: pd.DataFrame) -> list[tuple[str, str]]:
    """``(blake3, absolute path)`` of each unique content of the present files, in blake3 order."""
    live = present_files(manifest).drop_duplicates("blake3").sort_values("blake3")
    base = str(root)
    return [(d, os.path.join(base, p)) for d, p in zip(live["blake3"].tolist(), live["path"].tolist())]

"""Frequent maximal repeats in one shard of contents: the algorithm of the pattern analysis.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALGORITHM_VERSION",
    "SEPARATOR",
    "PatternOptions",
    "analyse_shard",
    "count_patterns",
    "drop_redundant",
    "score",
]

SEPARATOR = b"\x00"

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


def _suffix_structures(text: bytes) -> tuple[np.ndarray, np.ndarray]:
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
    return (
        np.asarray(out_h, dtype=np.int64),
        np.asarray(out_lb, dtype=np.int64),
        np.asarray(out_rb, dtype=np.int64),
    )


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
    sa, lcp = _suffix_structures(text)
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

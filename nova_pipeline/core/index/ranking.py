"""Ranking of hybrid search: weighted reciprocal rank fusion and the exact-match boosts.

``vector`` ranks chunks by cosine similarity of their embedding to the query's; ``lexical`` by BM25 over
code-aware terms (:mod:`.lexical`); ``hybrid`` fuses both lists with weighted reciprocal rank fusion
(Cormack, Clarke and Büttcher, SIGIR 2009: ``score(d) = Σ w_list / (k + rank_list(d))``, ``k = 60`` as in
the paper), over the top ``NOVA_SEARCH_CANDIDATES`` (50) of each side. A chunk whose symbol or path the
query names exactly (an identifier such as ``IgnoreRules`` or ``read_table``, or a path such as
``json/decoder.py``) gets one more list's rank-1 share, weighted by ``NOVA_SEARCH_EXACT_BOOST`` (half of it
for the methods of a class the query names), and so does a chunk that holds the query verbatim as a phrase
(an error message) in a string literal; half of it when the phrase is only quoted in prose (a docstring), so
the raise site ranks above the docs that quote its message. Hits of adjacent or overlapping chunks of one
symbol in one file then collapse into one hit (:func:`collapse_places`). Weights:
``NOVA_SEARCH_VECTOR_WEIGHT`` and ``NOVA_SEARCH_LEXICAL_WEIGHT`` (1.0 each),
``NOVA_SEARCH_RRF_K``. Plain functions over ids and texts: the searcher (:mod:`nova_pipeline.core.serving.
searcher`) feeds them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from nova_pipeline.core.errors import SettingsError

__all__ = [
    "HYBRID",
    "LEXICAL",
    "MERGE_GAP",
    "MODES",
    "VECTOR",
    "SearchSettings",
    "Span",
    "boost_shares",
    "collapse_places",
    "defined_names",
    "enclosing_names",
    "exact_targets",
    "exact_weight",
    "fuse",
    "is_exact",
    "phrase_in",
    "phrase_of",
    "phrase_share",
]

MODES = ("hybrid", "vector", "lexical")

HYBRID, VECTOR, LEXICAL = MODES

_DEFINED = re.compile(r"(?:async\s+def|def|class)\s+([A-Za-z_][\w.]*)")

_QUERY_WORD = re.compile(r"[A-Za-z_][\w./-]*")

# snake_case, camelCase, CamelCase, HTTPServer, dotted.names and paths/with/slashes
_IDENTIFIER_SHAPE = re.compile(r"_|[a-z][A-Z]|[A-Z]{2}[a-z]|\.|/")


@dataclass(frozen=True)
class SearchSettings:
    """Weights of hybrid ranking (see the module docstring); from ``NOVA_SEARCH_*`` by :meth:`from_env`."""

    vector_weight: float = 1.0
    lexical_weight: float = 1.0
    exact_boost: float = 1.0
    rrf_k: int = 60  # Cormack et al. 2009
    candidates: int = 50

    @classmethod
    def from_env(cls, env: dict | None = None) -> SearchSettings:
        """Read ``NOVA_SEARCH_VECTOR_WEIGHT``, ``_LEXICAL_WEIGHT``, ``_EXACT_BOOST``, ``_RRF_K`` and
        ``_CANDIDATES``.

        Raises:
            SettingsError: a value is not a number, or is negative.
        """
        env = os.environ if env is None else env
        out = {}
        for name, f in (
            ("vector_weight", float),
            ("lexical_weight", float),
            ("exact_boost", float),
            ("rrf_k", int),
            ("candidates", int),
        ):
            raw = env.get(f"NOVA_SEARCH_{name.upper()}")
            if raw in (None, ""):
                continue
            try:
                out[name] = f(raw)
            except ValueError:
                raise SettingsError(f"NOVA_SEARCH_{name.upper()}={raw!r} is not a number") from None
            if out[name] < 0:
                raise SettingsError(f"NOVA_SEARCH_{name.upper()} must not be negative")
        return cls(**out)


def defined_names(symbol: str) -> set[str]:
    """The names a chunk's symbol defines: ``"def Cls.run(self)"`` gives ``{"Cls.run", "run"}``; a merged
    symbol (``"def a, def b"``) gives each."""
    out: set[str] = set()
    for m in _DEFINED.finditer(symbol or ""):
        name = m.group(1)
        out.add(name)
        out.add(name.rsplit(".", 1)[-1])
    return out


def enclosing_names(symbol: str) -> set[str]:
    """The classes a chunk's symbol belongs to: ``"def Outer.Inner.run(self)"`` gives
    ``{"Outer", "Outer.Inner", "Inner"}``."""
    out: set[str] = set()
    for m in _DEFINED.finditer(symbol or ""):
        parts = m.group(1).split(".")[:-1]
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        out.update(parts)
    return out


def exact_targets(text: str) -> set[str]:
    """What in a query may name a symbol or path exactly: the query itself when it is one word, else its
    words shaped like identifiers or paths (``read_table``, ``IgnoreRules``, ``json/decoder.py``)."""
    words = _QUERY_WORD.findall(text.strip())
    if len(words) == 1:
        return {words[0].rstrip(".")}
    return {w.rstrip(".") for w in words if _IDENTIFIER_SHAPE.search(w.rstrip("."))}


def is_exact(targets: set[str], symbol: str, path: str) -> bool:
    """True when a target names ``symbol`` (one of its :func:`defined_names`) or ``path`` (the whole path,
    its last components, or its file name)."""
    if not targets:
        return False
    if targets & defined_names(symbol):
        return True
    return any(
        "/" in t or "." in t and not t.startswith(".") and (path == t or path.endswith("/" + t))
        for t in targets
    )


def exact_weight(targets: set[str], symbol: str, path: str) -> float:
    """How much of the exact-match boost a chunk gets: 1 when :func:`is_exact`, 0.5 when a target names
    the class the chunk's method belongs to (so the class's own head chunk, which defines it, stays
    first), else 0."""
    if is_exact(targets, symbol, path):
        return 1.0
    return 0.5 if targets and targets & enclosing_names(symbol) else 0.0


def phrase_of(text: str) -> str:
    """The query as a phrase to look for verbatim (case and runs of white space ignored): an error message
    or a sentence of at least 3 words and 12 characters, quotes around it dropped; else ``""``."""
    p = " ".join(text.strip().strip("'\"`").split()).lower()
    return p if len(p) >= 12 and len(p.split()) >= 3 else ""


def phrase_in(phrase: str, document: str | None) -> bool:
    """True when ``phrase`` (from :func:`phrase_of`) occurs in ``document`` (white space runs ignored)."""
    return bool(phrase and document) and phrase in " ".join(document.split()).lower()


def phrase_share(phrase: str, document: str | None) -> float:
    """How much of the boost a verbatim ``phrase`` match earns: 1.0 where it opens a string literal in code
    (``raise JSONDecodeError("Expecting property name ...", s, end)``: the site that says it), 0.5 where it
    is only quoted in prose (a docstring's usage example, a comment, a ``\"\"\"`` docstring's first
    line), 0.0 when absent. White space runs and case are ignored, as in :func:`phrase_in`."""
    if not (phrase and document):
        return 0.0
    flat = " ".join(document.split()).lower()
    at = flat.find(phrase)
    if at < 0:
        return 0.0
    while at >= 0:
        before = flat[max(0, at - 3) : at]
        if before[-1:] in ("'", '"') and before[-2:-1] not in ("'", '"'):
            return 1.0  # one quote, not three: a string literal in code
        at = flat.find(phrase, at + 1)
    return 0.5


def boost_shares(
    targets: set[str], phrase: str, candidates: list[tuple[str, str, str, str | None]]
) -> dict[str, float]:
    """Chunk id → share of the exact-match boost, for ``(id, symbol, path, text)`` candidates: the larger of
    :func:`exact_weight` and :func:`phrase_share`; ids with no share are left out."""
    out: dict[str, float] = {}
    for cid, symbol, path, text in candidates:
        share = max(exact_weight(targets, symbol, path), phrase_share(phrase, text))
        if share:
            out[cid] = max(share, out.get(cid, 0.0))
    return out


def fuse(
    ranked: list[tuple[list[str], float]], boosted: set[str] | dict[str, float], settings: SearchSettings
) -> list[tuple[str, float]]:
    """Weighted reciprocal rank fusion: ``[(ids best first, weight), ...]`` → ``[(id, score)]`` best first.

    ``score(d) = Σ weight / (rrf_k + rank)`` with ranks from 1; an id in ``boosted`` gets
    ``exact_boost × share / (rrf_k + 1)`` more (``share`` 1 for a set, else the dict's value). Ties keep the
    order of first appearance.
    """
    scores: dict[str, float] = {}
    for ids, weight in ranked:
        for rank, i in enumerate(ids, 1):
            scores[i] = scores.get(i, 0.0) + weight / (settings.rrf_k + rank)
    shares = boosted if isinstance(boosted, dict) else dict.fromkeys(boosted, 1.0)
    for i, share in shares.items():
        if i in scores:
            scores[i] += settings.exact_boost * share / (settings.rrf_k + 1)
    order = {i: n for n, i in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


MERGE_GAP = 3  # lines between two slices of one symbol that still count as adjacent


@dataclass(frozen=True)
class Span:
    """Where a chunk is: its root-relative path, symbol and 1-based inclusive lines."""

    path: str
    symbol: str
    start: int
    end: int


def collapse_places(
    order: list[tuple[str, float]], span_of: dict[str, Span], k: int
) -> list[tuple[str, float, int, int, list[str]]]:
    """One answer per place: ranked ``(id, score)`` pairs, best first, whose chunks are adjacent or
    overlapping slices of one symbol in one file merge into one entry ``(lead id, best score, start, end,
    merged ids)``.
    Adjacent: at most :data:`MERGE_GAP` lines between them (the blank lines and comments a chunker leaves
    between two slices of one body).

    The lead is the best-ranked chunk of the group, the score is its score (the best), the line range is the
    union of the group's, and ``merged`` lists the other chunks in rank order. Chunks without a symbol (or
    without a span) never merge. Groups keep the rank of their best chunk; a chunk that bridges two groups
    joins them. Returns the first ``k`` groups: pass more candidates than ``k`` so that merging still fills
    ``k``. Linear in ``len(order)`` times the groups of one symbol (a handful).
    """
    groups: list[list] = []  # [lead, score, start, end, merged, key]
    by_key: dict[tuple[str, str], list[list]] = {}
    for cid, score in order:
        span = span_of.get(cid)
        if span is None or not span.symbol:
            groups.append([cid, score, span.start if span else 0, span.end if span else 0, [], None])
            continue
        key = (span.path, span.symbol)
        touching = [
            g
            for g in by_key.get(key, [])
            if span.start <= g[3] + 1 + MERGE_GAP and span.end >= g[2] - 1 - MERGE_GAP
        ]
        if not touching:
            g = [cid, score, span.start, span.end, [], key]
            groups.append(g)
            by_key.setdefault(key, []).append(g)
            continue
        head, rest = touching[0], touching[1:]  # the best-ranked group the chunk touches
        head[4].append(cid)
        head[2], head[3] = min(head[2], span.start), max(head[3], span.end)
        for g in rest:  # bridged: fold the later groups into the first
            head[4] += [g[0], *g[4]]
            head[2], head[3] = min(head[2], g[2]), max(head[3], g[3])
            groups.remove(g)
            by_key[key].remove(g)
    return [(g[0], g[1], g[2], g[3], g[4]) for g in groups[:k]]

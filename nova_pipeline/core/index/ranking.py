"""Ranking of hybrid search: weighted reciprocal rank fusion and the exact-match boosts.

``vector`` ranks chunks by cosine similarity of their embedding to the query's; ``lexical`` by BM25 over
code-aware terms (:mod:`.lexical`); ``hybrid`` fuses both lists with weighted reciprocal rank fusion
(Cormack, Clarke and Büttcher, SIGIR 2009: ``score(d) = Σ w_list / (k + rank_list(d))``, ``k = 60`` as in
the paper), over the top ``NOVA_SEARCH_CANDIDATES`` (50) of each side. A chunk whose symbol or path the
query names exactly (an identifier such as ``IgnoreRules`` or ``read_table``, or a path such as
``json/decoder.py``) gets one more list's rank-1 share, weighted by ``NOVA_SEARCH_EXACT_BOOST`` (half of it
for the methods of a class the query names), and so does a chunk that holds the query verbatim as a phrase
(an error message). Weights: ``NOVA_SEARCH_VECTOR_WEIGHT`` and ``NOVA_SEARCH_LEXICAL_WEIGHT`` (1.0 each),
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
    "MODES",
    "VECTOR",
    "SearchSettings",
    "boost_shares",
    "defined_names",
    "enclosing_names",
    "exact_targets",
    "exact_weight",
    "fuse",
    "is_exact",
    "phrase_in",
    "phrase_of",
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


def boost_shares(
    targets: set[str], phrase: str, candidates: list[tuple[str, str, str, str | None]]
) -> dict[str, float]:
    """Chunk id → share of the exact-match boost, for ``(id, symbol, path, text)`` candidates: the larger of
    :func:`exact_weight` and 1 for a verbatim :func:`phrase_in` match; ids with no share are left out."""
    out: dict[str, float] = {}
    for cid, symbol, path, text in candidates:
        share = max(exact_weight(targets, symbol, path), float(phrase_in(phrase, text)))
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

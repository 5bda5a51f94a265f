"""The terms of the lexical index: a tokenizer that knows code.

:func:`code_tokens` turns text into terms the way code is written:

* every identifier is kept whole, lower-cased (``IgnoreRules`` → ``ignorerules``, ``read_table`` →
  ``read_table``), so a query naming it matches exactly;
* and split into its words at ``_`` and case changes (``IgnoreRules`` → ``ignore``, ``rules``;
  ``HTTPServer`` → ``http``, ``server``), stemmed with the Snowball English stemmer (PyStemmer), English stop
  words left out, so ``decoded JSON documents`` meets ``JSONDecoder.decode``;
* a lower-case compound of 5 or more characters is also split into its words by wordninja (``isclosed`` →
  ``is``, ``closed``; ``rfc2231`` → ``rfc``, ``2231``), so ``True if the connection is closed`` meets
  ``HTTPResponse.isclosed`` (see :func:`_compound_words`).
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["MIN_COMPOUND", "Corpus", "TOKENIZE_SLICE", "TOKENIZER_VERSION", "code_tokens", "token_ids"]

TOKENIZER_VERSION = "code-tokens-2"  # part of every index's digest: a tokenizer change rebuilds the index

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?")
# split points inside an identifier: lower→Upper, and the end of an acronym before a capitalised word
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


@lru_cache(maxsize=200_000)
def _identifier_terms(word: str) -> tuple[str, ...]:
    """The terms of one identifier or number: itself (lower-cased) and its stemmed words."""
    whole = word.lower()
    if word[0].isdigit():
        return (whole,)
    parts = [p.lower() for chunk in word.split("_") for p in _CAMEL.split(chunk) if p]
    words = [w for p in parts for w in _compound_words(p) if w not in _stopwords()]
    stems = _stemmer().stemWords(words) if words else []
    out = [whole] if whole.strip("_") and whole not in _stopwords() else []
    for s in stems:
        if s != whole and len(s) > 1:
            out.append(s)
    return tuple(out)


MIN_COMPOUND = 5  # shorter lower-case words (``cwd``, ``hdr``, ``msg``) are abbreviations, not compounds


@lru_cache(maxsize=200_000)
def _compound_words(part: str) -> tuple[str, ...]:
    """``part`` and, for a lower-case compound (``isclosed``, ``getvalue``, ``rfc2231``), its words.

    The split is wordninja's (the most probable sequence of English words under a Zipf model of word
    frequency, Wikipedia's unigram counts): kept only when every piece has at least 2 characters, so an
    abbreviation it cannot read (``getaddrinfo`` → ``get a ddr info``) stays whole.
    """
    if len(part) < MIN_COMPOUND:
        return (part,)
    import wordninja

    pieces = wordninja.split(part)
    if len(pieces) < 2 or any(len(p) < 2 for p in pieces):
        return (part,)
    return (part, *pieces)


def code_tokens(text: str) -> list[str]:
    """Terms of ``text`` for the BM25 index and for queries (see the module docstring).

    >>> code_tokens("class IgnoreRules: raise ValueError('bad')")
    ['class', 'ignorerules', 'ignor', 'rule', 'raise', 'rais', 'valueerror', 'valu', 'error', 'bad']
    """
    out: list[str] = []
    for m in _WORD.finditer(text):
        out.extend(_identifier_terms(m.group()))
    return out


TOKENIZE_SLICE = 8192  # texts turned into Python strings at a time while tokenizing


@dataclass
class Corpus:
    """Every document's term ids in one run: document ``i``'s are ``terms[offsets[i]:offsets[i + 1]]``.

    ``terms`` is int32 (4 bytes a token, no object per document), ``offsets`` int64 of ``len(self) + 1``,
    ``vocab`` maps each term to its id. It is bm25s's corpus object (``ids`` and ``vocab``), which
    :class:`~.lexical_matrix.SlicedBM25` indexes in slices."""

    terms: np.ndarray
    offsets: np.ndarray
    vocab: dict[str, int]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def ids(self) -> Corpus:
        """bm25s reads a corpus object's ``ids`` and ``vocab``; the ids are this corpus itself."""
        return self

    @property
    def mean_length(self) -> float:
        """Mean terms per document (0.0 for none): the ``avgdl`` of BM25's length normalisation."""
        return float(self.offsets[-1] / len(self)) if len(self) else 0.0

    def as_lists(self) -> list[list[int]]:
        """Every document's term ids as a list of ints: bm25s's own corpus form."""
        return [self.terms[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def token_ids(texts) -> Corpus:
    """The corpus of ``texts`` (a pandas Series) for the BM25 index: document ``i`` holds the term ids of
    :func:`code_tokens` of ``texts[i]`` (``[""]`` when it has none), terms numbered in order of first use.

    Memory: 4 bytes per token in one array, plus one string per distinct term. Given lists of token strings,
    bm25s keeps them and builds lists of Python ints beside them. Measured: 230 MiB instead of 300 above
    the loaded table at 62,829 chunks, and the lexical stage's peak RSS in bench_scale's 10K tier (343,000
    chunks) fell from 4,282 to 3,356 MB (an ``array("i")`` per document then; one run since). The texts
    become Python strings :data:`TOKENIZE_SLICE` at a time."""
    vocab: dict[str, int] = {}
    terms = array("i")
    offsets = array("q", [0])
    for start in range(0, len(texts), TOKENIZE_SLICE):
        for text in texts.iloc[start : start + TOKENIZE_SLICE].tolist():
            terms.extend([vocab.setdefault(t, len(vocab)) for t in code_tokens(text or "") or [""]])
            offsets.append(len(terms))
    return Corpus(np.frombuffer(terms, dtype=np.intc), np.frombuffer(offsets, dtype=np.int64), vocab)

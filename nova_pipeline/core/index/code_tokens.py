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
from functools import lru_cache

__all__ = ["MIN_COMPOUND", "TOKENIZE_SLICE", "TOKENIZER_VERSION", "code_tokens", "token_ids"]

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


def token_ids(texts) -> tuple[list[array], dict[str, int], float]:
    """The corpus of ``texts`` (a pandas Series) as bm25s takes it pre-tokenized: ``(ids, vocab, mean tokens
    per document)``, where ``ids[i]`` is the :func:`code_tokens` of ``texts[i]`` (``[""]`` when it has none)
    as an ``array("i")`` of term ids and ``vocab`` maps each term to its id (in order of first use).

    Memory: 4 bytes per token, plus one string per distinct term. Given lists of token strings, bm25s keeps
    them and builds lists of Python ints beside them. Measured: 230 MiB instead of 300 above the loaded
    table at 62,829 chunks, and the lexical stage's peak RSS in bench_scale's 10K tier (343,000 chunks) fell
    from 4,282 to 3,356 MB. The texts become Python strings :data:`TOKENIZE_SLICE` at a time."""
    vocab: dict[str, int] = {}
    ids: list[array] = []
    tokens = 0
    for start in range(0, len(texts), TOKENIZE_SLICE):
        for text in texts.iloc[start : start + TOKENIZE_SLICE].tolist():
            terms = code_tokens(text or "") or [""]
            tokens += len(terms)
            ids.append(array("i", [vocab.setdefault(t, len(vocab)) for t in terms]))
    return ids, vocab, (tokens / len(ids) if ids else 0.0)

"""The lexical index: BM25 over the chunks (bm25s), with a tokenizer that knows code.

Engineers search code with identifiers, error strings and half-remembered docstrings; a small general
embedding model misses many of those, and term matching catches them. Terms come from
:func:`~nova_pipeline.core.index.code_tokens.code_tokens`, which turns text into terms the way code is
written.

Scores are BM25 (Lucene's variant, ``k1=1.2, b=0.75`` as Lucene and Elasticsearch default) computed by bm25s
(Lù, 2024, "BM25S: Orders of magnitude faster lexical search via eager sparse scoring").

An index is a directory: bm25s's arrays and vocabulary, ``docs.parquet`` (one row per document, in index
order: ``chunk_id, path, symbol, language, start_line, end_line`` and where its text is),
``texts/part-NN.arrow`` (the documents' texts in :data:`TEXT_SHARDS` uncompressed Arrow IPC files by the
blake3 of the path, which readers memory-map; an edit of one file changes one shard, so a golden version
links the others) and
``meta.json`` (written last: the commit marker) with the chunk-set digest it was built from.

**The document table.** Together, ``docs.parquet`` and ``texts/`` are the id-indexed view of
``source_chunks`` that search reads its hits' text, lines and symbol from (:meth:`LexicalIndex.documents`;
:mod:`.documents`): the vector store keeps slim records. A lookup is a dict probe per id and a read of the
mapped rows (``benchmarks/bench_scaleout.py --free-embedder`` prints its cost for 50 ids). Live updates
and the rebuild job's small changes keep a small delta beside it (:mod:`.lexical_delta`), compacted when
the tree is quiet or the delta grows, instead of rewriting it. ``NOVA_HOME/lexical/<digest>/`` holds the
built ones and ``NOVA_HOME/lexical/CURRENT`` names the live one, so a rebuild never leaves a half-written
index in use and an unchanged chunk set is not indexed again.
"""

from __future__ import annotations

import collections
import fnmatch
import functools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import pandas as pd

from nova_pipeline.core.atomic import atomic_write_bytes, fsync_dir
from nova_pipeline.core.errors import IndexNotBuiltError, NovaError
from nova_pipeline.core.index.code_tokens import MIN_COMPOUND, TOKENIZER_VERSION, code_tokens, token_ids
from nova_pipeline.core.index.documents import (
    TEXT_SHARDS,
    TEXTS,
    Document,
    DocumentTableError,
    map_texts,
    text_shard,
    write_texts,
)
from nova_pipeline.core.layout import Layout

__all__ = [
    "B",
    "DIGEST_COLUMNS",
    "DELTA",
    "DOC_COLUMNS",
    "FORMAT_VERSION",
    "TEXTS",
    "TEXT_SHARDS",
    "Document",
    "K1",
    "META",
    "MIN_COMPOUND",
    "TOKENIZER_VERSION",
    "BuildStats",
    "LexicalHit",
    "LexicalIndex",
    "LexicalIndexError",
    "build",
    "chunks_digest",
    "clear_delta",
    "code_tokens",
    "current_path",
    "glob_match",
    "index_files",
    "install",
    "text_shard",
    "load",
    "load_current",
    "update",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = "texts-2"  # the directory's files (texts/ since slim vector records), also digested
K1, B = 1.2, 0.75
DOC_COLUMNS = ["chunk_id", "path", "symbol", "language", "start_line", "end_line"]
META = "meta.json"
DELTA = "DELTA.json"  # the live delta beside the built indexes (lexical_delta.py)


class LexicalIndexError(NovaError):
    """A lexical index directory is missing a file or does not match its chunks."""


DIGEST_COLUMNS = ["chunk_id", "content_blake3", "path", "symbol", "language", "start_line", "end_line"]


def chunks_digest(chunks: pd.DataFrame) -> str:
    """What an index holds, as 32 hex digits: blake3 over the tokenizer version and the sorted row hashes of
    every chunk's id, text hash and metadata (:data:`DIGEST_COLUMNS`), so row order does not matter.

    A row hash is pandas' ``hash_pandas_object`` (SipHash-2-4 of each value with pandas' fixed key, combined
    per row; the same for ``str``, ``object`` and Arrow string columns, and for any integer width).
    Vectorised: about 2 ms for 3,000 chunks, where hashing row by row took 15 ms and, at 500,000 chunks,
    seconds on every unchanged rebuild (``lexical_index`` and ``golden_copy`` each compute it).
    """
    rows = pd.util.hash_pandas_object(chunks[DIGEST_COLUMNS], index=False).to_numpy()
    h = blake3.blake3(f"{TOKENIZER_VERSION}/{FORMAT_VERSION}".encode())
    h.update(np.sort(rows).tobytes())
    return h.hexdigest()[:32]


def kept_digest(home) -> str | None:
    """:func:`chunks_digest` of ``home``'s chunks table (None: no table), computed once per version of the
    table (:func:`~nova_pipeline.core.tables.memo`): ``lexical_index`` and the golden copy ask each run."""
    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import memo, read_table

    def compute() -> str | None:
        return None if (t := read_table(home, SOURCE_CHUNKS, DIGEST_COLUMNS)) is None else chunks_digest(t)

    return memo(home, SOURCE_CHUNKS, "lexical.chunks_digest", compute)


@dataclass
class LexicalHit:
    """One BM25 hit: the document's row in ``docs``, its score, and the query terms it contains."""

    row: int
    score: float
    matched: list[str]


class LexicalIndex:
    """A loaded BM25 index (read-only, thread-safe to query), and the document table of its chunks."""

    def __init__(
        self,
        path: Path,
        retriever,
        docs: pd.DataFrame,
        meta: dict,
        texts=None,
        extends: LexicalIndex | None = None,
    ):
        """``extends``: an index whose document table is the first rows of ``docs``; its arrays are reused
        and only the rows after them are converted (a live delta's documents: at 62,829 documents, making
        every array again took 60 ms, most of it the id map)."""
        self.path, self.retriever, self.docs, self.meta = Path(path), retriever, docs, meta
        self.texts = (
            texts  # shard -> the ``text`` Arrow column of texts/part-NN.arrow (memory-mapped), or None
        )
        start = len(extends.docs) if extends is not None else 0
        new = docs.iloc[start:] if start else docs

        def column(name: str, values: np.ndarray) -> np.ndarray:
            return values if extends is None else np.concatenate([getattr(extends, name), values])

        if texts is not None:
            self._text_shard = column("_text_shard", new["text_shard"].fillna(0).to_numpy(dtype=np.int64))
            self._text_row = column("_text_row", new["text_row"].fillna(0).to_numpy(dtype=np.int64))
        self._vocab = retriever.vocab_dict
        # plain arrays of the document table, for the per-hit lookups of every search (a pandas lookup per
        # value cost 4.5 ms per hybrid search)
        self._paths = column("_paths", new["path"].to_numpy())
        self._languages = column("_languages", new["language"].to_numpy())
        self.ids = column("ids", new["chunk_id"].to_numpy())
        self.symbols = column("symbols", new["symbol"].fillna("").to_numpy())
        self.starts = column("starts", new["start_line"].to_numpy())
        self.ends = column("ends", new["end_line"].to_numpy())
        own = {cid: start + i for i, cid in enumerate(new["chunk_id"].tolist())}  # a later row wins
        self._row_of = own if extends is None else collections.ChainMap(own, extends._row_of)
        self._globs: dict[str, np.ndarray] = {}  # pattern -> document mask (the index never changes)

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def digest(self) -> str:
        return self.meta["digest"]

    @property
    def vocab(self) -> dict[str, int]:
        """Term → term id."""
        return self._vocab

    @functools.cached_property
    def distinct_paths(self) -> int:
        """How many files the index covers."""
        return len(set(self._paths.tolist()))

    def row_of(self, chunk_id: str) -> int | None:
        return self._row_of.get(chunk_id)

    def mask(self, path_glob: str | None = None, language: str | None = None) -> np.ndarray | None:
        """A 0/1 float mask over the documents for the filters, or None when there is none."""
        if not path_glob and not language:
            return None
        keep = np.ones(len(self.docs), dtype=bool)
        if path_glob:
            keep &= self._glob(path_glob)
        if language:
            keep &= self._languages == language
        return keep.astype(np.float32)

    def paths_matching(self, path_glob: str) -> list[str]:
        """The distinct document paths that ``path_glob`` matches (fnmatch, ``*`` crosses ``/``)."""
        keep = self._glob(path_glob)
        return sorted(set(self._paths[keep].tolist()))

    def _glob(self, pattern: str) -> np.ndarray:
        """Which documents' paths ``pattern`` matches (computed once per pattern; at most 64 kept)."""
        mask = self._globs.get(pattern)
        if mask is None:
            rx = re.compile(fnmatch.translate(pattern))  # fnmatchcase's own translation
            mask = np.fromiter((bool(rx.match(p)) for p in self._paths), dtype=bool, count=len(self._paths))
            if len(self._globs) >= 64:
                self._globs.clear()
            self._globs[pattern] = mask
        return mask

    def path_of(self, row: int) -> str:
        return self._paths[row]

    def texts_of(self, rows: Sequence[int]) -> list[str | None]:
        """The texts of document ``rows`` (None for each when the index has no ``texts/``: built before
        the document table held texts)."""
        if self.texts is None or not len(rows):
            return [None] * len(rows)
        return [self.texts[self._text_shard[r]][int(self._text_row[r])].as_py() for r in rows]

    def documents(self, chunk_ids: Sequence[str]) -> dict[str, Document]:
        """The documents of ``chunk_ids`` that the index holds, by id (ids it lacks are left out: a chunk no
        longer in ``source_chunks``). Costs a dict probe per id and one Arrow ``take``."""
        found = [(cid, r) for cid in dict.fromkeys(chunk_ids) if (r := self.row_of(cid)) is not None]
        texts = self.texts_of([r for _, r in found])
        return {
            cid: Document(
                cid,
                self._paths[r],
                int(self.starts[r]),
                int(self.ends[r]),
                self.symbols[r] or "",
                self._languages[r],
                text,
            )
            for (cid, r), text in zip(found, texts)
        }

    def language_of(self, row: int) -> str:
        return self._languages[row]

    def search(
        self, query: str, k: int, mask: np.ndarray | None = None, with_terms: bool = True
    ) -> list[LexicalHit]:
        """The ``k`` best documents for ``query`` (BM25 over :func:`code_tokens`), best first; documents
        with score 0 (no query term) are never returned, nor those the ``mask`` sets to 0. With
        ``with_terms`` False, ``matched`` is left empty (the caller asks :meth:`matched_terms` for the few
        hits it shows)."""
        terms = list(dict.fromkeys(t for t in code_tokens(query) if t in self._vocab))
        if not terms or len(self.docs) == 0:
            return []
        scores = self.retriever.get_scores(terms, weight_mask=mask)
        n = min(k, int(np.count_nonzero(scores > 0)))
        if n == 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            LexicalHit(int(i), float(scores[i]), self.matched_terms(int(i), terms) if with_terms else [])
            for i in top
        ]

    def matched_terms(self, row: int, terms: Sequence[str]) -> list[str]:
        """The query terms document ``row`` contains (a binary search in each term's sorted posting list)."""
        indptr, indices = self.retriever.scores["indptr"], self.retriever.scores["indices"]
        out = []
        for t in terms:
            tid = self._vocab[t]
            postings = indices[indptr[tid] : indptr[tid + 1]]
            i = int(np.searchsorted(postings, row))
            if i < len(postings) and postings[i] == row:
                out.append(t)
        return out


def glob_match(path: str, pattern: str) -> bool:
    """fnmatch of a root-relative path (``*`` crosses ``/``, so ``json/*`` covers the whole package)."""
    return fnmatch.fnmatchcase(path, pattern)


# ---- building, storing, loading ---------------------------------------------------------------------


@dataclass
class BuildStats:
    """What :func:`update` did."""

    digest: str
    docs: int
    vocabulary: int = 0
    built: bool = False
    seconds: float = 0.0
    path: Path | None = None


def build(chunks: pd.DataFrame, dest: Path, digest: str | None = None) -> BuildStats:
    """Index ``chunks`` (``chunk_id, text, path, symbol, language, start_line, end_line``) into the new
    directory ``dest`` (written beside, then renamed; ``meta.json`` last).

    Raises:
        OSError: the directory cannot be written.
    """
    from nova_pipeline.core.index.lexical_matrix import SlicedBM25

    started = time.perf_counter()
    digest = digest or chunks_digest(chunks)
    dest = Path(dest)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    corpus = token_ids(chunks["text"])
    avgdl, vocabulary = corpus.mean_length, 0
    if len(corpus):
        retriever = SlicedBM25(k1=K1, b=B, method="lucene")
        retriever.index(corpus, show_progress=False)
        retriever.save(str(tmp), show_progress=False)
        vocabulary = len(retriever.vocab_dict)
        del retriever  # its arrays are on disk: the texts below need the memory
    del corpus
    docs = chunks[DOC_COLUMNS].reset_index(drop=True)
    docs["text_shard"], docs["text_row"] = write_texts(tmp / TEXTS, docs["path"], chunks["text"])
    docs.to_parquet(tmp / "docs.parquet", index=False)
    meta = {
        "digest": digest,
        "docs": len(docs),
        "tokenizer": TOKENIZER_VERSION,
        "k1": K1,
        "b": B,
        "vocabulary": vocabulary,
        "avgdl": avgdl,  # for live deltas
        "built_at": time.time(),
    }
    atomic_write_bytes(tmp / META, json.dumps(meta, sort_keys=True).encode())
    fsync_dir(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    return BuildStats(digest, len(docs), meta["vocabulary"], True, time.perf_counter() - started, dest)


def load(path: Path) -> LexicalIndex:
    """Load an index directory (arrays memory-mapped).

    Raises:
        LexicalIndexError: ``meta.json`` or another file is missing or unreadable.
    """
    import bm25s

    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
        docs = pd.read_parquet(path / "docs.parquet")
        if meta["docs"]:
            retriever = bm25s.BM25.load(str(path), mmap=True, show_progress=False, verbosity=0)
        else:
            retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
            retriever.vocab_dict = {}
    except (OSError, ValueError, KeyError) as exc:
        raise LexicalIndexError(
            f"the lexical index at {path} cannot be read ({exc}): run the rebuild job, "
            "or `nova golden reset --yes` to bring it back from the golden copy"
        ) from exc
    if len(docs) != meta["docs"]:
        raise LexicalIndexError(
            f"the lexical index at {path} has {len(docs)} documents, its meta says "
            f"{meta['docs']}: run the rebuild job"
        )
    try:
        texts = map_texts(path, docs)
    except DocumentTableError as exc:
        raise LexicalIndexError(str(exc)) from exc
    return LexicalIndex(path, retriever, docs, meta, texts)


def current_path(home: Path) -> Path | None:
    """The live index directory of ``home`` (``lexical/CURRENT``), or None."""
    layout = Layout.of(home)
    try:
        name = layout.lexical_current.read_text().strip()
    except OSError:
        return None
    path = layout.lexical / name
    return path if (path / META).exists() else None


def base_vocabulary(home: Path) -> int:
    """Terms of the live base index under ``home``, as built (its ``meta.json``); 0: none, or unreadable."""
    cur = current_path(home)
    try:
        return int(json.loads((cur / META).read_text()).get("vocabulary", 0)) if cur is not None else 0
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def load_current(home: Path) -> LexicalIndex:
    """The live lexical index of ``home``.

    Raises:
        IndexNotBuiltError: there is none yet (the message says to run the rebuild job).
        LexicalIndexError: it cannot be read.
    """
    path = current_path(home)
    if path is None:
        raise IndexNotBuiltError(
            "no lexical index yet: run the rebuild job (make rebuild, or dagster job "
            "execute -m nova_pipeline.definitions -j rebuild)"
        )
    return load(path)


def update(
    home: Path, chunks: pd.DataFrame, keep: int = 2, with_texts: Callable[[], pd.DataFrame] | None = None
) -> BuildStats:
    """Make ``home``'s live lexical index the index of ``chunks``: nothing is done when CURRENT already
    holds exactly these chunks (same digest); else a new directory is built and CURRENT switched to it.
    Older directories beyond ``keep`` are removed (CURRENT and the one before stay), and so is a live delta
    (:mod:`.lexical_delta`): CURRENT then holds every chunk.

    ``chunks`` needs only :data:`DIGEST_COLUMNS` to decide; when it has no ``text`` column, ``with_texts()``
    returns the same chunks with their texts and is called only when a build is needed (the texts are most
    of the chunks table's bytes).

    Raises:
        OSError: the index cannot be written; the live one is untouched.
    """
    layout = Layout.of(home)
    digest = chunks_digest(chunks)
    cur = current_path(home)
    if cur is not None and cur.name == digest:
        clear_delta(home)  # the base holds exactly these chunks: a live delta is obsolete
        return BuildStats(
            digest, len(chunks), json.loads((cur / META).read_text()).get("vocabulary", 0), False, 0.0, cur
        )
    if "text" not in chunks.columns and with_texts is not None:
        chunks = with_texts()
    layout.lexical.mkdir(parents=True, exist_ok=True)
    stats = build(chunks, layout.lexical / digest, digest)
    _set_current(home, digest)
    clear_delta(home)
    _prune(layout, keep, digest, cur.name if cur is not None else None)
    return stats


def clear_delta(home: Path) -> None:
    """Remove the live delta (:mod:`.lexical_delta`, ``lexical/DELTA.json``): CURRENT was rebuilt or
    replaced."""
    try:
        os.unlink(Layout.of(home).lexical / DELTA)
    except FileNotFoundError:
        pass


def _set_current(home: Path, name: str) -> None:
    """Point ``lexical/CURRENT`` at the directory ``name`` (atomically)."""
    atomic_write_bytes(Layout.of(home).lexical_current, (name + "\n").encode())


def install(home: Path, source: Path) -> BuildStats:
    """Copy the index directory ``source`` (a golden version's ``lexical/``) into ``home`` and make it the
    live one; used by reset and restore.

    Raises:
        LexicalIndexError: ``source`` is no readable index.
    """
    started = time.perf_counter()
    meta = load(source).meta  # refuses a broken one before anything changes
    layout = Layout.of(home)
    layout.lexical.mkdir(parents=True, exist_ok=True)
    dest = layout.lexical / meta["digest"]
    if not (dest / META).exists():
        tmp = layout.lexical / f".tmp-{meta['digest']}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
        fsync_dir(layout.lexical)
    _set_current(home, meta["digest"])
    clear_delta(home)  # a delta against the replaced base means nothing now
    return BuildStats(
        meta["digest"], meta["docs"], meta.get("vocabulary", 0), True, time.perf_counter() - started, dest
    )


def _prune(layout: Layout, keep: int, *protected: str | None) -> None:
    dirs = sorted(
        (p for p in layout.lexical.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for p in dirs[keep:]:
        if p.name not in protected:
            shutil.rmtree(p, ignore_errors=True)


def index_files(path: Path) -> Iterable[Path]:
    """Every file of an index directory, its ``texts/`` shards included (for the golden copy); their names
    relative to ``path`` are ``f.relative_to(path)``."""
    return sorted(p for p in Path(path).rglob("*") if p.is_file())

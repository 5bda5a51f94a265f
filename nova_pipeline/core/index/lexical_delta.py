"""Live updates of the lexical index: a small delta beside the built one, merged at query time.

Rebuilding the whole BM25 index on every save costs 0.36 s at 1,657 chunks and 6.4 s at 50,000 (bm25s
indexes the whole corpus at once). ``nova watch`` applies an edit in well under that, so a live update does
not rebuild: it writes ``NOVA_HOME/lexical/DELTA.json``, the difference between the chunks now and the
built index that ``lexical/CURRENT`` names (its ``base`` digest):

* ``removed``: ids of the base whose chunk is gone or changed (masked out of the base's scores);
* ``added``: the live chunks the base lacks, with their text (scored at query time).

The ``rebuild`` job's ``lexical_index`` writes one too (:func:`apply`), so that a one-file edit reads the
changed chunks' texts and not every chunk's; its delta names the chunk-set digest it holds, so a rerun does
no work, and the golden copy carries it beside the base (``lexical_delta.json``).

A delta is always the whole difference to its base, and a delta whose ``base`` is not CURRENT is ignored.
:func:`compute` derives it from the whole chunk set (a catch-up: a start, or another process wrote); each
later update of ``nova watch`` patches the delta that process wrote last with its own change, so its cost
follows the change and not the tree (:func:`patch`; a
test checks the patched delta equals :func:`compute`'s after edits, additions, deletions and a revert). A
rebuild of the base (:func:`~nova_pipeline.core.index.lexical.update`, and :func:`compact` when the delta
grows past :data:`COMPACT_ABOVE` documents or the tree is quiet) removes it.

**Scoring.** Added documents are scored with the same formula bm25s uses for the base (Lucene's BM25 as in
Kamphuis et al., ECIR 2020: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, ``tf / (tf + k1 (1 - b + b dl /
avgdl))``), with ``N`` and ``df`` counting the base and the added documents and the base's mean document
length. The base keeps the IDF it was built with until it is compacted: a delta of a few files moves the
statistics of a corpus of thousands by well under 1 %, and ranks are what hybrid fusion uses.

Cost: building the delta is set arithmetic over the ids (about 5 ms at 50,000 chunks) and the tokens of
the added texts; a query scores the added documents in Python (about 10 µs per document and term).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.index import lexical
from nova_pipeline.core.layout import Layout

__all__ = [
    "COMPACT_ABOVE",
    "DEFER_FOLD_UP_TO",
    "DELTA",
    "Applied",
    "Delta",
    "LiveLexicalIndex",
    "apply",
    "clear",
    "compute",
    "delta_stamp",
    "holding",
    "id_failures",
    "live_id_failures",
    "load_live",
    "parse",
    "patch",
    "read",
    "read_file",
    "write",
]

DELTA = lexical.DELTA
COMPACT_ABOVE = 2000  # added documents beyond which a live update rebuilds the base instead
# Added documents up to which a live update that passes COMPACT_ABOVE still writes a delta, and leaves the
# rebuild of the base to the watcher's next quiet second (``fold_when_quiet``): the rebuild grows with the
# index (0.9 s at 8,000 chunks, 6.4 s at 50,000), and would otherwise stand between a burst and searchable.
# Meanwhile a query scores the added documents in Python (about 10 µs per document and term: 0.2 s for
# three terms at this bound), for the second or two until the fold.
DEFER_FOLD_UP_TO = 6000


@dataclass
class Delta:
    """The difference between the live chunks and the built index ``base`` (its digest)."""

    base: str
    removed: set[str] = field(default_factory=set)
    added: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*lexical.DOC_COLUMNS, "text"]))
    digest: str | None = None  # lexical.chunks_digest of the live chunks, when the writer computed it

    @property
    def empty(self) -> bool:
        return not self.removed and len(self.added) == 0


def _path(home) -> Path:
    return Layout.of(home).lexical / DELTA


def delta_stamp(home) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of the delta file, or None: what a reader compares to know it changed."""
    try:
        st = os.stat(_path(home))
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def compute(base_ids, chunks: pd.DataFrame, base: str) -> Delta:
    """The delta that makes the index ``base`` (holding ``base_ids``: a set, a sequence or an Arrow array of
    chunk ids) hold exactly ``chunks`` (``chunk_id``, the document columns and ``text``; without ``text``,
    ``added`` lacks it too and the caller fills it in)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrow's vectorised set membership: Series.isin on Arrow strings iterates in Python (40 ms at 60,000)
    if not isinstance(base_ids, pa.Array):
        base_ids = pa.array(list(base_ids) if isinstance(base_ids, set) else base_ids, pa.string())
    ids = pa.array(chunks["chunk_id"].to_numpy(dtype=object), pa.string())
    new = ~pc.is_in(ids, value_set=base_ids).to_numpy(zero_copy_only=False)
    columns = [*lexical.DOC_COLUMNS, "text"] if "text" in chunks.columns else lexical.DOC_COLUMNS
    added = chunks[new][columns].reset_index(drop=True)
    removed = pc.filter(base_ids, pc.invert(pc.is_in(base_ids, value_set=ids))).to_pylist()
    return Delta(base=base, removed=set(removed), added=added)


def patch(last: Delta, in_base: Container[str], gone: Sequence[str], new: pd.DataFrame) -> Delta:
    """``last`` after one change of the chunks: ``gone`` (ids that were live) left and ``new`` (chunks
    that were not live: ``chunk_id``, the document columns and ``text``) came. ``in_base`` holds the ids of
    the base ``last`` is a delta of.

    With ``B`` the base and ``T`` the chunks before (``added = T - B``, ``removed = B - T``), the chunks
    after are ``T - gone + new``, so ``added' = added - gone + (new - B)`` and ``removed' = (removed +
    (gone & B)) - new``: what :func:`compute` gives for them (a test checks), at a cost that follows the
    change and not the index."""
    gone = set(gone)
    new_ids = new["chunk_id"].tolist()
    kept = last.added[~last.added["chunk_id"].isin(gone)] if gone and len(last.added) else last.added
    fresh = new[np.array([i not in in_base for i in new_ids], dtype=bool)][[*lexical.DOC_COLUMNS, "text"]]
    added = pd.concat([kept, fresh], ignore_index=True) if len(fresh) else kept.reset_index(drop=True)
    removed = (last.removed | {i for i in gone if i in in_base}) - set(new_ids)
    return Delta(base=last.base, removed=removed, added=added)


def write(home, delta: Delta) -> None:
    """Write the delta atomically (or remove the file when the delta is empty)."""
    if delta.empty:
        clear(home)
        return
    body = {
        "base": delta.base,
        "digest": delta.digest,
        "removed": sorted(delta.removed),
        "added": json.loads(delta.added.to_json(orient="records")),
    }
    atomic_write_bytes(_path(home), json.dumps(body).encode())


def read(home) -> Delta | None:
    """The delta on disk, or None when there is none or it cannot be read (then the base alone answers:
    the next live update or rebuild writes a good one)."""
    return read_file(_path(home))


def read_file(path: Path) -> Delta | None:
    """The delta in the file ``path`` (``NOVA_HOME/lexical/DELTA.json``, or a golden version's copy), or
    None when there is none or it cannot be read."""
    try:
        return parse(Path(path).read_bytes())
    except OSError:
        return None


def parse(raw: bytes) -> Delta | None:
    """The delta a delta file's bytes hold, or None when they are not one."""
    try:
        body = json.loads(raw)
        added = pd.DataFrame(body["added"], columns=[*lexical.DOC_COLUMNS, "text"])
        return Delta(base=body["base"], removed=set(body["removed"]), added=added, digest=body.get("digest"))
    except (ValueError, KeyError, TypeError):
        return None


def id_failures(path: Path, ids: Sequence[str], delta: Delta | None) -> list[str]:
    """Why the index at ``path`` with ``delta`` applied (None: none) does not hold exactly the documents
    ``ids`` (empty: it does). A delta of another base is a failure.

    Reads only the base's ``meta.json`` and ``docs.parquet``'s ``chunk_id`` column."""
    if delta is None:
        return _base_id_failures(path, ids)
    try:  # a golden version's copy of a base is named lexical/: its meta names the digest
        base = json.loads((Path(path) / lexical.META).read_text()).get("digest")
    except (OSError, ValueError) as exc:
        return [f"the lexical index at {path} cannot be read: {exc}"]
    if delta.base != base:
        return [f"the lexical delta is against {delta.base[:12]}, not the index at {path}"]
    return _base_id_failures(path, ids, removed=delta.removed, added=delta.added["chunk_id"].tolist())


def _base_id_failures(
    path: Path, ids: Iterable[str], removed: Iterable[str] = (), added: Iterable[str] = ()
) -> list[str]:
    """Why the built index at ``path`` does not hold exactly the documents ``ids`` (empty: it does); with a
    delta, its ``removed`` ids taken out of the base's and its ``added`` ids put in.

    Reads only ``meta.json`` and ``docs.parquet``'s ``chunk_id`` column, and compares the ids as sets with
    Arrow's hash kernels (``is_in``), not as Python sets: at 3.5 million chunks, 5.4 s against 7.0 s for
    Python sets of the table's ids as a list (both measured while another run used the machine).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        meta = json.loads((path / lexical.META).read_text())
        have = pq.read_table(path / "docs.parquet", columns=["chunk_id"]).column("chunk_id")
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        return [f"the lexical index at {path} cannot be read: {exc}"]
    have = _arrow_ids(have)
    want, removed, added = _arrow_ids(ids), _arrow_ids(sorted(set(removed))), _arrow_ids(sorted(set(added)))
    failures = []
    if len(have) != meta.get("docs"):
        failures.append(
            f"the lexical index at {path} has {len(have)} documents, its meta says {meta.get('docs')}"
        )
    # live = (have - removed) | added; missing = want - live; extra = live - want
    live = pc.or_(
        pc.and_(pc.is_in(want, value_set=have), pc.invert(pc.is_in(want, value_set=removed))),
        pc.is_in(want, value_set=added),
    )
    missing = pc.unique(want.filter(pc.invert(live)))
    kept_extra = pc.invert(pc.or_(pc.is_in(have, value_set=want), pc.is_in(have, value_set=removed)))
    extra = pc.unique(
        pa.concat_arrays([have.filter(kept_extra), added.filter(pc.invert(pc.is_in(added, value_set=want)))])
    )
    if len(missing) or len(extra):
        example = pc.min_max(missing if len(missing) else extra)["min"].as_py()
        failures.append(
            f"the lexical index at {path}{' with its delta' if len(removed) or len(added) else ''} lacks "
            f"{len(missing)} chunks and has {len(extra)} others (e.g. {example})"
        )
    return failures


def _arrow_ids(ids):
    """Chunk ids (an Arrow column or array, a pandas Series, or any iterable of str) as one Arrow
    ``large_string`` array."""
    import pyarrow as pa

    if not isinstance(ids, (pa.Array, pa.ChunkedArray, pd.Series)):
        ids = list(ids)
    if not isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = pa.array(ids, pa.large_string())  # a Series of Arrow-backed strings gives its own, uncopied
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    return ids.cast(pa.large_string())


def live_id_failures(home, ids: Sequence[str]) -> list[str]:
    """:func:`id_failures` of ``home``'s live lexical index (CURRENT and the delta for it)."""
    path = lexical.current_path(home)
    if path is None:
        return ["there is no live lexical index"]
    delta = read(home)
    return id_failures(path, ids, delta if delta is not None and delta.base == path.name else None)


def kept_id_failures(home) -> tuple[list[str], int]:
    """``(failures, chunks)``: :func:`live_id_failures` against ``home``'s chunks table, computed once per
    version of the table, of CURRENT's document table and of the delta file (each only ever replaced
    whole; :func:`~nova_pipeline.core.tables.memo`). Call it under the writer lock, so that the index's files
    cannot change meanwhile."""
    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import file_identity, memo, require_table

    cur = lexical.current_path(home)
    docs = file_identity(cur / "docs.parquet") if cur is not None else None
    kind = f"lexical_check/{cur.name if cur else '-'}/{docs}/{delta_stamp(home)}"

    def compute() -> list:
        ids = require_table(home, SOURCE_CHUNKS, columns=["chunk_id"])["chunk_id"]  # Arrow-backed: no copy
        return [live_id_failures(home, ids), len(ids)]

    failures, n = memo(home, SOURCE_CHUNKS, kind, compute)
    return failures, n


def holds(home, digest: str, with_delta: bool = True) -> bool:
    """Whether the live lexical index of ``home`` holds the chunk set whose :func:`~.lexical.chunks_digest` is
    ``digest``, told by digests alone: CURRENT is named by it with no delta against it, or (``with_delta``)
    the delta on disk is against CURRENT and names it (the rebuild job's deltas do; ``nova watch``'s,
    without one, answer False: :func:`holding` compares their ids)."""
    path = lexical.current_path(home)
    if path is None:
        return False
    delta = read(home)
    if delta is None or delta.base != path.name:
        return path.name == digest
    return with_delta and delta.digest == digest


def holding(home, digest: str, chunk_ids: Callable[[], Iterable[str]]) -> tuple[Path, bytes | None] | None:
    """``(CURRENT's directory, the delta file's bytes or None)`` when the live lexical index of ``home``
    holds exactly the chunks whose :func:`~.lexical.chunks_digest` is ``digest``, else None. The delta's
    bytes are read once, so what a caller copies is what was checked. A delta that names the digest it holds
    (the rebuild job's) is compared by digest; one without (``nova watch``'s) by its ids, ``chunk_ids()``."""
    path = lexical.current_path(home)
    if path is None:
        return None
    if path.name == digest:
        return path, None
    try:
        raw = _path(home).read_bytes()
    except OSError:
        return None
    delta = parse(raw)
    if delta is None or delta.base != path.name:
        return None
    if delta.digest == digest or (delta.digest is None and not id_failures(path, list(chunk_ids()), delta)):
        return path, raw
    return None


@dataclass
class Applied:
    """What :func:`apply` did. ``how``: ``unchanged`` (the live index already held the chunks), ``delta``
    (a delta against the base was written) or ``built`` (a new base). ``added``/``removed``: the delta's
    documents (0 for a base)."""

    how: str
    digest: str
    base: str
    docs: int
    vocabulary: int
    added: int
    removed: int
    seconds: float
    path: Path


def apply(
    home,
    chunks: pd.DataFrame,
    texts_of: Callable[[list[str]], pd.DataFrame],
    with_texts: Callable[[], pd.DataFrame],
    compact_above: int = COMPACT_ABOVE,
    digest: str | None = None,
) -> Applied:
    """Make ``home``'s live lexical index hold exactly ``chunks`` (:data:`~.lexical.DIGEST_COLUMNS`, no
    texts needed): the ``rebuild`` job's path, whose cost follows the change while it is small. ``digest``:
    their :func:`~.lexical.chunks_digest`, when the caller has it (computed here otherwise: 0.3 s at
    342,015 chunks, about 3 s at 3.5 million).

    * CURRENT, or CURRENT with the delta on disk, already holds them (same :func:`~.lexical.chunks_digest`):
      nothing is done.
    * Else, when the difference to CURRENT is at most ``compact_above`` added documents and a tenth of the
      base's (beyond which the base's IDF and mean length drift), a delta is written
      (:func:`compute`, with only the added documents' texts read, through ``texts_of(ids)`` → ``chunk_id,
      text``). Cost: the base's ids, set arithmetic and the added texts (about 1 s at 300,000 chunks where
      a rebuild of the base took 8 s; ``benchmarks/bench_scale.py``).
    * Else (or ``compact_above`` 0, or no base yet) the base is rebuilt from every chunk
      (:func:`~.lexical.update`, which reads ``with_texts()``) and the delta removed: the compaction.

    Raises:
        OSError: the index or delta cannot be written; the live one is untouched.
    """
    import time

    import pyarrow.parquet as pq

    started = time.perf_counter()
    digest = digest or lexical.chunks_digest(chunks)
    cur = lexical.current_path(home)
    if cur is not None and cur.name != digest and compact_above > 0:
        meta = json.loads((cur / lexical.META).read_text())
        vocabulary = meta.get("vocabulary", 0)
        # beyond a tenth of the base, the base's statistics (IDF, mean length) would drift: compact
        limit = min(compact_above, max(1, int(meta.get("docs", 0)) // 10))

        def kept(how: str, delta: Delta) -> Applied:
            n_added, n_removed = len(delta.added), len(delta.removed)
            seconds = time.perf_counter() - started
            return Applied(how, digest, cur.name, len(chunks), vocabulary, n_added, n_removed, seconds, cur)

        last = read(home)
        if last is not None and last.base == cur.name and last.digest == digest:
            return kept("unchanged", last)
        base_ids = pq.read_table(cur / "docs.parquet", columns=["chunk_id"]).column(0).combine_chunks()
        delta = compute(base_ids, chunks, cur.name)
        if not delta.empty and len(delta.added) <= limit:
            texts = texts_of(delta.added["chunk_id"].tolist()) if len(delta.added) else None
            if texts is not None:
                texts = texts.drop_duplicates("chunk_id")[["chunk_id", "text"]]
                delta.added = delta.added.merge(texts, on="chunk_id", how="left")
            if texts is None or delta.added["text"].notna().all():  # else: a table changed meanwhile
                delta.digest = digest
                write(home, delta)
                return kept("delta", delta)
    stats = lexical.update(home, chunks, with_texts=with_texts)
    how = "built" if stats.built else "unchanged"
    return Applied(
        how, digest, digest, stats.docs, stats.vocabulary, 0, 0, time.perf_counter() - started, stats.path
    )


def clear(home) -> None:
    """Remove the delta (the base was rebuilt from every chunk)."""
    lexical.clear_delta(home)


class LiveLexicalIndex(lexical.LexicalIndex):
    """A built index with a delta applied: rows ``0..len(base)-1`` are the base's (removed ones score 0),
    then one row per added document. Same interface as :class:`~nova_pipeline.core.index.lexical.
    LexicalIndex`."""

    def __init__(self, base: lexical.LexicalIndex, delta: Delta):
        added = delta.added.reset_index(drop=True)
        docs = pd.concat([base.docs, added[lexical.DOC_COLUMNS]], ignore_index=True)
        super().__init__(base.path, base.retriever, docs, base.meta, base.texts, extends=base)
        self.base_size = len(base.docs)
        self._added_texts = added["text"].tolist()
        self.delta = delta
        self._alive = ~np.isin(base.ids, list(delta.removed)) if delta.removed else None
        self._tokens = [Counter(lexical.code_tokens(t or "") or [""]) for t in added["text"].tolist()]
        self._lengths = np.array([sum(c.values()) for c in self._tokens], dtype=np.float64)
        self._delta_df: Counter = Counter()
        for c in self._tokens:
            self._delta_df.update(c.keys())
        self._vocab = {**{t: -1 for t in self._delta_df}, **base.vocab}  # delta-only terms: no base id
        self._avgdl = float(base.meta.get("avgdl") or (self._lengths.mean() if len(self._lengths) else 1.0))
        self._n = self.base_size - len(delta.removed) + len(added)

    def _base_df(self, term: str) -> int:
        tid = self.retriever.vocab_dict.get(term)
        if tid is None:
            return 0
        indptr = self.retriever.scores["indptr"]
        return int(indptr[tid + 1] - indptr[tid])

    def search(self, query, k, mask=None, with_terms=True):
        terms = list(dict.fromkeys(t for t in lexical.code_tokens(query) if t in self._vocab))
        if not terms or len(self.docs) == 0:
            return []
        scores = np.zeros(len(self.docs), dtype=np.float32)
        base_terms = [t for t in terms if t in self.retriever.vocab_dict]
        if base_terms and self.base_size:
            scores[: self.base_size] = self.retriever.get_scores(base_terms)
            if self._alive is not None:
                scores[: self.base_size] *= self._alive
        if self._tokens:
            k1, b = float(self.meta.get("k1", lexical.K1)), float(self.meta.get("b", lexical.B))
            norm = k1 * ((1 - b) + b * self._lengths / self._avgdl)
            for t in terms:
                df = self._base_df(t) + self._delta_df.get(t, 0)
                if not df:
                    continue
                idf = math.log(1 + (self._n - df + 0.5) / (df + 0.5))
                tf = np.array([c.get(t, 0) for c in self._tokens], dtype=np.float64)
                scores[self.base_size :] += (idf * tf / (norm + tf)).astype(np.float32)
        if mask is not None:
            scores *= mask
        n = min(k, int(np.count_nonzero(scores > 0)))
        if n == 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            lexical.LexicalHit(
                int(i), float(scores[i]), self.matched_terms(int(i), terms) if with_terms else []
            )
            for i in top
        ]

    def texts_of(self, rows):
        base = [r for r in rows if r < self.base_size]
        got = iter(super().texts_of(base))
        return [next(got) if r < self.base_size else self._added_texts[r - self.base_size] for r in rows]

    def documents(self, chunk_ids):
        if self._alive is None:
            return super().documents(chunk_ids)
        return {  # a removed chunk of the base is no document any more
            cid: d
            for cid, d in super().documents(chunk_ids).items()
            if (r := self.row_of(cid)) is not None and (r >= self.base_size or self._alive[r])
        }

    def matched_terms(self, row, terms):
        if row < self.base_size:
            return super().matched_terms(row, [t for t in terms if t in self.retriever.vocab_dict])
        have = self._tokens[row - self.base_size]
        return [t for t in terms if t in have]


def load_live(
    home,
    path: Path | None = None,
    base: lexical.LexicalIndex | None = None,
    delta_path: Path | None = None,
) -> lexical.LexicalIndex | None:
    """The live lexical index of ``home``: CURRENT's (or ``path``'s) with the delta applied when there is
    one for it; None when there is no built index. ``base``: the index at ``path``, already loaded (a
    long-running reader keeps it, and only applies each new delta: about 10 ms at 50,000 documents where
    loading the base again costs about ten times that). ``delta_path``: read the delta there instead of
    ``home``'s (a golden version's copy).

    Raises:
        LexicalIndexError: the built index cannot be read.
    """
    path = path or lexical.current_path(home)
    if path is None:
        return None
    base = base if base is not None and base.path == Path(path) else lexical.load(path)
    delta = read(home) if delta_path is None else read_file(delta_path)
    if delta is None or delta.base != base.digest or delta.empty:
        return base
    return LiveLexicalIndex(base, delta)

"""Search: one path for the Python API, ``nova search`` and ``nova serve``; hybrid by default, with
failover.

**Modes and ranking** are in :mod:`nova_pipeline.core.index.ranking`. **Filters**: ``path`` (a glob: ``*``
crosses ``/``, as in ``json/*`` or ``*.md``) and ``language`` apply in every mode: on the vector side as a
Chroma ``where`` on the chunk metadata (``language`` equal, ``path`` in the paths the glob matches), on the
lexical side as a mask over the BM25 scores.

**One answer per place.** A long function is split into several chunks; hits of adjacent or overlapping
chunks of one symbol in one file collapse into one hit
(:func:`~nova_pipeline.core.index.ranking.collapse_places`) with the merged line range, the best score and
the other chunks' ids in ``Hit.merged``; ``k`` counts collapsed hits. ``collapse=False`` returns raw chunks.

**Documents.** Hits get their text, lines and symbol from the document table of the lexical index that
goes with the store that answered (:meth:`Searcher.lexical_index`): vectors are slim records.

**Failover.** A :class:`Searcher` reads the failover pointer (``NOVA_HOME/failover/state.json``) on every
query. Primary active: the primary is queried, bounded by ``query_timeout_s``; a query that fails or times
out is answered from the backup store in the same call, and counts as a failure on the searcher's circuit
breaker (3 failures open it, so the next queries go straight to the backup until it half-opens after 30 s
and a trial query decides). Backup active: the backup store answers.

The backup store is made from the CURRENT golden copy: in memory (a Chroma ``EphemeralClient`` loaded from
CURRENT's export) when the resource estimate allows it, else the on-disk runtime copy; it is reloaded when
CURRENT changes, and built on first use. Every hit says which store answered, and a backup answer carries
``stale_as_of``: when the golden version it came from was made.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nova_pipeline.core.errors import (
    FailoverError,
    IndexNotBuiltError,
    InvalidRequestError,
    NovaError,
)
from nova_pipeline.core.index import lexical, lexical_delta
from nova_pipeline.core.index.embedding import Embedder, SentenceTransformerEmbedder, bundled_fingerprint
from nova_pipeline.core.index.query_batcher import QueryBatcher
from nova_pipeline.core.index.ranking import (
    HYBRID,
    LEXICAL,
    MODES,
    VECTOR,
    SearchSettings,
    Span,
    boost_shares,
    collapse_places,
    exact_targets,
    fuse,
    phrase_of,
)
from nova_pipeline.core.index.vector_query import Hit, query, texts_by_id, where_filter, with_documents
from nova_pipeline.core.index.vector_store import get_collection, open_client
from nova_pipeline.core.serving.backup_store import BackupStore
from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.pointer import BACKUP, PRIMARY, read_state
from nova_pipeline.core.serving.query_breaker import QueryBreaker
from nova_pipeline.core.serving.views import ViewCache
from nova_pipeline.core.settings import Settings

__all__ = ["SearchResult", "Searcher"]

log = logging.getLogger(__name__)


PRIMARY_WORKERS = 16  # threads for primary queries: a hung primary holds some, the deadline frees the caller
COLLAPSE_FETCH = 3  # vector and lexical modes fetch 3k candidates when collapsing (hybrid fetches 50 anyway)
SERVER_COUNT_EVERY_S = 5.0  # a Chroma server's count (an empty primary is a failed one) is checked this often


def _ignore_outcome(future: concurrent.futures.Future) -> None:
    """Collect the outcome of a primary query that ran past its deadline (its caller has moved on)."""
    if not future.cancelled():
        future.exception()


@dataclass
@dataclass
class SearchResult:
    """Hits, best first, and where they came from.

    ``fell_back`` is True when the primary was active but failed or timed out on this query
    (``primary_error`` says how).
    """

    hits: list[Hit]
    store: str
    stale_as_of: str | None = None
    fell_back: bool = False
    primary_error: str = ""
    mode: str = "hybrid"


class Searcher:
    """Searches with failover (see the module docstring). One per process is enough; thread-safe, and queries
    run concurrently.

    Args:
        settings: ``NOVA_HOME`` and ``NOVA_CHROMA_URL``.
        embedder: the query embedder (default: the model of ``model_dir``, loaded on the first query that
            needs it).
        failover: timeouts and breaker settings (default: from the environment).
        prefer_memory: let the backup store live in memory when the estimate allows (``nova serve``); the
            one-shot API and CLI use the on-disk runtime copy.
        ranking: hybrid weights (default: from the environment).
        model_dir: the model when no ``embedder`` is given: ``"auto"`` (``NOVA_EMBED_MODEL``, else the
            active model of ``nova model switch``, else the bundled one), None for the bundled one, or a
            directory. Its fingerprint names the collection searched.
        shared_primary: a writer's own client, for a searcher in the writer's process (``nova serve
            --watch``: :meth:`~nova_pipeline.core.live.client.WriterClient.reading`): called with the
            fingerprint, a context manager giving ``(collection, count)``, or None when it cannot answer for
            the primary now (then the fresh views answer).
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        failover: FailoverSettings | None = None,
        prefer_memory: bool = False,
        ranking: SearchSettings | None = None,
        model_dir: Path | None | str = "auto",
        shared_primary: Callable[[str], contextlib.AbstractContextManager] | None = None,
    ):
        self.settings = settings
        self._shared_primary = shared_primary
        self.failover = failover or FailoverSettings.from_env()
        self.ranking = ranking or SearchSettings.from_env()
        self._embedder = embedder
        if model_dir == "auto":  # NOVA_EMBED_MODEL, else the active model, else the bundled one
            from nova_pipeline.core.serving.model_switch import model_dir_for

            model_dir = model_dir_for(settings.home)
        self.model_dir = None if embedder is not None else model_dir
        self.fingerprint = (
            embedder.fingerprint if embedder is not None else bundled_fingerprint(self.model_dir)
        )
        self.backup = BackupStore(settings, self.fingerprint, self.failover.max_memory_mb, prefer_memory)
        self.breaker = QueryBreaker(self.failover.failure_threshold, self.failover.half_open_after_s)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=PRIMARY_WORKERS, thread_name_prefix="primary-query"
        )
        # embedded primary: views reopened when another process wrote; server: one client, fresh by nature
        self._views = (
            None
            if settings.chroma_url
            else ViewCache(settings.home, settings.layout.vectors, self.fingerprint)
        )
        self._server: tuple[object, float, int] | None = None  # (collection, counted at, count)
        self._lexical: dict[tuple, lexical.LexicalIndex] = {}
        self._lexical_bases: dict[str, lexical.LexicalIndex] = {}
        self._lock = threading.Lock()
        self._batcher: QueryBatcher | None = None  # made on the first query

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = SentenceTransformerEmbedder(self.model_dir, home=self.settings.home)
            return self._embedder

    def embed_query(self, text: str) -> np.ndarray:
        """The query's embedding, ``(1, dimension)`` float32: through one model thread that batches the
        queries of concurrent searches (:mod:`nova_pipeline.core.index.query_batcher`)."""
        model = self.embedder
        with self._lock:
            if self._batcher is None:
                self._batcher = QueryBatcher(model)
            batcher = self._batcher
        return batcher.embed(text)

    @contextlib.contextmanager
    def _primary(self) -> Iterator[object]:
        """The primary collection for the block.

        Raises:
            IndexNotBuiltError: there is no primary index, or its collection is empty (a primary that lost
                its data is a failed primary).
            VectorStoreError: it cannot be opened.
        """
        if self._shared_primary is not None:
            with self._shared_primary(self.fingerprint) as shared:
                if shared is not None:
                    col, count = shared
                    if count == 0:
                        raise IndexNotBuiltError(f"the primary collection {col.name} is empty")
                    yield col
                    return
        if self._views is not None:
            with self._views.collection() as (col, count):
                if count == 0:
                    raise IndexNotBuiltError(f"the primary collection {col.name} is empty")
                yield col
            return
        with self._lock:
            cached = self._server
        now = time.monotonic()
        if cached is None or now - cached[1] > SERVER_COUNT_EVERY_S:
            col = (
                cached[0]
                if cached is not None
                else get_collection(
                    open_client(self.settings.home, self.settings.chroma_url, create=False),
                    self.fingerprint,
                    create=False,
                )
            )
            cached = (col, now, col.count())
            with self._lock:
                self._server = cached
        if cached[2] == 0:
            raise IndexNotBuiltError(f"the primary collection {cached[0].name} is empty")
        yield cached[0]

    def _on_primary(self, op: Callable):
        try:
            with self._primary() as col:
                return op(col)
        except IndexNotBuiltError:
            raise
        except Exception:
            self._reset_primary()  # a client or view in a bad state is opened again next time
            raise

    def _reset_primary(self) -> None:
        if self._views is not None:
            self._views.invalidate()
        with self._lock:
            self._server = None

    def _run(self, op: Callable, failed_over: bool, deadline: float):
        """``(op(collection), store, stale_as_of, fell_back, error)`` on the store the pointer names, with the
        per-query fallback to the backup store.

        The breaker is asked before the primary query and told its outcome after; the query itself runs in
        the pool, waited for until ``deadline`` (``time.monotonic()`` seconds: the whole request's, waiting
        for a pool thread included). A query past it, a failure, a missing or empty primary collection, or an
        open breaker is answered from the backup store, when there is a golden copy.
        """
        error = ""
        if not failed_over:
            if self.breaker.allow():
                future = self._pool.submit(self._on_primary, op)
                try:
                    result = future.result(timeout=max(0.0, deadline - time.monotonic()))
                except concurrent.futures.TimeoutError:
                    self.breaker.failure()
                    future.add_done_callback(_ignore_outcome)
                    error = (
                        f"the primary did not answer within the query deadline "
                        f"({self.failover.query_timeout_s:g} s, waiting included)"
                    )
                except IndexNotBuiltError as exc:
                    self.breaker.failure()
                    if not self._golden_exists():
                        raise
                    error = f"the primary has no index: {exc}"
                except Exception as exc:  # noqa: BLE001 - any failure of the primary falls back
                    self.breaker.failure()
                    error = f"{type(exc).__name__}: {exc}"
                else:
                    self.breaker.success()
                    return result, PRIMARY, None, False, ""
            else:
                error = "the search breaker is open: the primary failed recently"
            log.warning("primary query failed, answering from the backup store: %s", error)
        try:
            with self.backup.collection() as (col, stale):
                return op(col), BACKUP, stale, not failed_over, error
        except NovaError as exc:
            if error:
                raise FailoverError(
                    f"the primary failed ({error}) and no backup store can answer: {exc}"
                ) from None
            raise

    def _golden_exists(self) -> bool:
        from nova_pipeline.core.protect import golden

        return (golden.golden_root(self.settings.home) / golden.CURRENT).is_file()

    def healthy(self, timeout: float | None = None) -> bool:
        """Whether a search can be answered now, by the primary or the backup store: one real query (nearest
        neighbour of a unit vector, no embedding) through the same path as :meth:`search`, bounded by
        ``timeout`` seconds (default: the query timeout)."""
        timeout = self.failover.query_timeout_s if timeout is None else timeout
        unit = np.zeros((1, 384), dtype=np.float32)
        unit[0, 0] = 1.0

        def op(col):
            return col.query(query_embeddings=unit, n_results=1, include=[])

        try:
            state = read_state(self.settings.home)
            self._run(op, state.failed_over, time.monotonic() + timeout)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means: not healthy (logged)
            log.warning("health probe failed: %s", exc)
            return False

    def lexical_index(self, store: str = PRIMARY) -> lexical.LexicalIndex | None:
        """The BM25 index that goes with ``store``: the live one (``NOVA_HOME/lexical``) for the primary,
        the CURRENT golden version's for the backup, each falling back to the other; None when there is
        neither. Loaded once per directory and live delta (directories are immutable, a rebuild makes a new
        one; ``nova watch`` rewrites the delta, see :mod:`~nova_pipeline.core.index.lexical_delta`)."""
        from nova_pipeline.core.protect import golden

        def frozen() -> Path | None:  # CURRENT's, read from the pointer without listing the versions
            root = golden.golden_root(self.settings.home)
            try:
                p = root / (root / golden.CURRENT).read_text().strip() / golden.LEXICAL_DIR
            except OSError:
                return None
            return p if (p / lexical.META).exists() else None

        order = ((lambda: lexical.current_path(self.settings.home)), frozen)
        path = next((p for p in (f() for f in (order if store == PRIMARY else order[::-1])) if p), None)
        if path is None:
            return None
        live = path == lexical.current_path(self.settings.home)
        # a golden version's delta sits beside its lexical/ and never changes
        delta_path = None if live else path.parent / golden.LEXICAL_DELTA
        key = (str(path), lexical_delta.delta_stamp(self.settings.home) if live else None)
        with self._lock:
            if key not in self._lexical:
                # the built index of this directory, kept while it is current; a new delta is applied to it
                base = self._lexical_bases.get(str(path)) or lexical.load(path)
                self._lexical_bases = {str(path): base}
                self._lexical.clear()  # an older directory, or an older delta, is no longer current
                self._lexical[key] = lexical_delta.load_live(self.settings.home, path, base, delta_path)
            return self._lexical[key]

    def search(
        self,
        text: str,
        k: int = 5,
        mode: str = HYBRID,
        path: str | None = None,
        language: str | None = None,
        deadline: float | None = None,
        collapse: bool = True,
    ) -> SearchResult:
        """The ``k`` best chunks for ``text`` (see the module docstring for modes and filters), from the
        store the pointer names, with the per-query fallback.

        Args:
            text: the query, in words or code.
            k: number of hits.
            mode: ``hybrid`` (default), ``vector`` or ``lexical``.
            path: a glob over root-relative paths (``*`` crosses ``/``); None: every path.
            language: the manifest's language (``python``, ``markdown``, ...); None: every language.
            deadline: ``time.monotonic()`` by which the primary must have answered, else the backup store
                answers (default: now plus ``NOVA_QUERY_TIMEOUT``; ``nova serve`` passes the request's).
            collapse: merge hits of adjacent or overlapping chunks of one symbol (default); False: raw chunks.

        Raises:
            ValueError: an unknown mode.
            IndexNotBuiltError: nothing was indexed yet, or ``lexical`` mode without a lexical index (the
                message says to run the rebuild job).
            VectorStoreError, FailoverError: neither the primary nor a backup store can answer.
        """
        if mode not in MODES:
            raise InvalidRequestError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        state = read_state(self.settings.home)
        # the lexical index: the lexical side of the search, and the document table every hit's text,
        # lines and symbol are read from (the vector store keeps slim records)
        lex = self.lexical_index(BACKUP if state.failed_over else PRIMARY)
        if lex is None and mode == LEXICAL:
            raise IndexNotBuiltError(
                "no lexical index yet: run the rebuild job (make rebuild, or dagster "
                "job execute -m nova_pipeline.definitions -j rebuild)"
            )
        if lex is None and mode != LEXICAL:
            log.warning(
                "no lexical index (the document table) yet: run the rebuild job; until then hits have no text"
            )
        # collapsing merges some candidates: ask for more, so that k places remain
        n = max(k, self.ranking.candidates) if mode == HYBRID else k * COLLAPSE_FETCH if collapse else k
        where, paths = where_filter(lex, path, language)
        if paths is not None and not paths:
            return SearchResult(hits=[], store=BACKUP if state.failed_over else PRIMARY, mode=mode)
        lex_hits = (
            lex.search(text, n, lex.mask(path, language), with_terms=False)
            if lex is not None and mode != VECTOR
            else []
        )
        lex_ids = [lex.ids[h.row] for h in lex_hits]
        vectors = self.embed_query(text) if mode != LEXICAL else None
        if deadline is None:  # from here: loading the model on a first query is not the primary's delay
            deadline = time.monotonic() + self.failover.query_timeout_s
        targets = exact_targets(text) if mode == HYBRID else set()
        phrase = phrase_of(text) if mode == HYBRID else ""
        over = 4 if path and paths is None else 1  # a glob without a lexical index: filter after the query

        def top(order, vhits):  # the k hits shown: collapsed places, or raw chunks
            if not collapse:
                return order[:k], {}
            spans = {h.chunk_id: Span(h.path, h.symbol, h.start_line, h.end_line) for h in vhits}
            for i, h in zip(lex_ids, lex_hits):
                if i not in spans:
                    r = h.row
                    symbol = lex.symbols[r] or ""
                    spans[i] = Span(lex.path_of(r), symbol, int(lex.starts[r]), int(lex.ends[r]))
            places = collapse_places(order, spans, k)
            return [(c, sc) for c, sc, *_ in places], {c: (a, b, m) for c, _, a, b, m in places if m}

        def op(col):
            vhits = []
            if vectors is not None:
                vhits = query(col, vectors, n * over, where)[0]
                if path and paths is None:
                    vhits = [h for h in vhits if lexical.glob_match(h.path, path)][:n]
                vhits = with_documents(vhits, lex, col)  # texts, lines and symbols from the document table
            by_id = {h.chunk_id: h for h in vhits}
            if mode == VECTOR:
                order = [(h.chunk_id, h.score) for h in vhits]
            elif mode == LEXICAL:
                order = [(i, h.score) for i, h in zip(lex_ids, lex_hits)]
            else:
                # the lexical candidates' texts: for the phrase match now, and for the hits shown
                texts = texts_by_id(lex, [i for i in lex_ids if i not in by_id] if phrase else [])
                candidates = [(h.chunk_id, h.symbol, h.path, h.text) for h in vhits] + [
                    (i, lex.symbols[h.row], lex.path_of(h.row), by_id[i].text if i in by_id else texts.get(i))
                    for i, h in zip(lex_ids, lex_hits)
                ]
                boosted = boost_shares(targets, phrase, candidates)
                order, merged = top(
                    fuse(
                        [
                            ([h.chunk_id for h in vhits], self.ranking.vector_weight),
                            (lex_ids, self.ranking.lexical_weight),
                        ],
                        boosted,
                        self.ranking,
                    ),
                    vhits,
                )
                for cid, _ in order:
                    if cid in by_id:
                        by_id[cid].exact = boosted.get(cid, 0.0) >= 1.0
                if not phrase:  # the texts of the lexical-only hits shown
                    texts = texts_by_id(lex, [cid for cid, _ in order if cid not in by_id])
                return order, by_id, texts, boosted, merged
            order, merged = top(order, vhits)
            texts = texts_by_id(lex, [cid for cid, _ in order if cid not in by_id])
            return order, by_id, texts, {}, merged

        answer, store, stale, fell_back, error = self._run(op, state.failed_over, deadline)
        order, by_id, texts, boosted, merged = answer
        lex_by_id = {i: h for i, h in zip(lex_ids, lex_hits)}
        terms = [
            t
            for t in dict.fromkeys(lexical.code_tokens(text))
            if lex is not None and mode != VECTOR and t in lex.vocab
        ]
        hits = []
        for cid, score in order:
            h = by_id.get(cid)
            lh = lex_by_id.get(cid)
            if h is None:  # found by the lexical side only
                row = lh.row
                h = Hit(
                    path=lex.path_of(row),
                    start_line=int(lex.starts[row]),
                    end_line=int(lex.ends[row]),
                    symbol=lex.symbols[row] or "",
                    language=lex.language_of(row),
                    score=score,
                    text=texts.get(cid) or "",
                    chunk_id=cid,
                    exact=boosted.get(cid, 0.0) >= 1.0,
                )
            h.score = score
            h.lexical_score = lh.score if lh is not None else None
            row = lh.row if lh is not None else (lex.row_of(cid) if lex is not None else None)
            if terms and row is not None:  # only for the hits shown
                h.matched_terms = lex.matched_terms(row, terms)
            if cid in merged:
                h.start_line, h.end_line, h.merged = merged[cid]
            hits.append(h)
        return SearchResult(
            hits=_label(hits, store, stale),
            store=store,
            stale_as_of=stale,
            fell_back=fell_back,
            primary_error=error,
            mode=mode,
        )

    def close(self) -> None:
        """Stop the query pool and close the store views (queries still running finish on their own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._batcher is not None:
            self._batcher.close()
        if self._views is not None:
            self._views.close()
        self.backup.close()


def _label(hits: list[Hit], store: str, stale: str | None) -> list[Hit]:
    for h in hits:
        h.store, h.stale_as_of = store, stale
    return hits

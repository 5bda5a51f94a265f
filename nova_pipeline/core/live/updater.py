"""One live update of the index: the tree as it is now, applied through the same core functions the assets
use, in a fraction of a second for a save.

:class:`LiveIndex` keeps what a run would load again each time: the manifest and the chunks (the
``source_files`` and ``source_chunks`` tables), the model, the tokenizer, the embedding cache and the base
ids of the lexical index. An update (:meth:`LiveIndex.update`):

1. scans the tree against the previous manifest (:func:`~nova_pipeline.core.ingest.manifest.scan`: only
   files whose size or mtime changed are read and hashed; the ignore rules are the scan's);
2. consults the mass-deletion guard, then chunks the changed files
   (:func:`~nova_pipeline.core.index.chunking.chunk_manifest`; unchanged files keep their chunks) and
   embeds the new chunks (only what the cache lacks); steps 1 and 2 run before the lock is taken, so a
   burst's embedding never keeps readers from opening a view;
3. takes the writer lock (lock order 1 of :mod:`nova_pipeline.core.locks`; through
   :func:`~nova_pipeline.core.serving.failover.writing_to`, so while failed over it writes the backup
   store and journals it, as a run would), upserts the new chunks' vectors and deletes the gone ones: the
   difference of the chunk ids, so the collection is not listed; a catch-up (:meth:`LiveIndex.catch_up`,
   at start and whenever another process wrote the tables) reconciles against the collection's ids
   instead, like an unchanged rebuild;
4. writes the lexical index's delta (:mod:`~nova_pipeline.core.index.lexical_delta`), or rebuilds the base
   when the delta grew past its limit, and releases the lock: **searchable** from here (the release marks
   a new generation, which ``nova serve``'s views follow);
5. under the lock again (no new generation), writes the ``source_files``, ``source_chunks`` and binaries
   tables, unless another writer wrote them meanwhile (then the next update catches up), and stores the
   new contents in the content store (no garbage collection: that stays with the full rebuild).

A ``kill -9`` anywhere leaves a state the next start's catch-up repairs exactly: vectors are content
addressed, the embedding cache committed what was embedded, and the tables are replaced atomically.
Dictionary training, pattern analysis and golden promotion stay with the ``rebuild`` job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nova_pipeline.core.errors import MassDeletionError, VectorStoreError
from nova_pipeline.core.index import lexical, lexical_delta
from nova_pipeline.core.index.chunking import chunk_manifest, splice_chunks
from nova_pipeline.core.index.embedding import Embedder, Tokenizer
from nova_pipeline.core.index.embedding_cache import EmbeddingCache, embed_with_cache
from nova_pipeline.core.index.reconcile import reconcile
from nova_pipeline.core.index.vector_store import DEFAULT_BATCH, upsert_chunks
from nova_pipeline.core.ingest.manifest import ScanResult, scan
from nova_pipeline.core.ingest.walk import DEFAULT_MAX_FILE_SIZE, ScanOptions
from nova_pipeline.core.keys import SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.live.client import WriterClient
from nova_pipeline.core.live.report import UpdateReport
from nova_pipeline.core.protect.guard import DeletionGuard
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import (
    SOURCE_FILES_BINARIES,
    read_arrow,
    read_table,
    table_attrs,
    table_path,
    write_table,
)

__all__ = ["LiveIndex"]

log = logging.getLogger(__name__)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass
class _Plan:
    """What one update or catch-up writes (see :meth:`LiveIndex._plan`)."""

    result: ScanResult
    chunks: pd.DataFrame | None = None  # the whole chunk table after it (an update's: spliced late)
    fresh: pd.DataFrame | None = None  # an update's: every chunk of the added and changed files
    changed: frozenset[str] = frozenset()  # an update's: the paths added, changed or deleted
    new: pd.DataFrame | None = None  # an update's: chunks the table lacked (embedded, upserted)
    vecs: list[np.ndarray] = field(default_factory=list)  # their vectors, one array per batch
    gone: list[str] = field(default_factory=list)  # an update's: ids the table loses
    count: int = 0  # chunks after it


class LiveIndex:
    """The index of one tree, kept live by :meth:`update`. One writer per process: call it from one thread.

    Args:
        settings: the tree (``source_dir``), ``NOVA_HOME`` and the Chroma URL.
        embedder: the model (loaded on the first text the cache lacks).
        tokenizer: the model's tokenizer (default: the bundled model's).
        guard: the mass-deletion guard (default settings).
        max_file_size: as the scan's.
        make_embedder: builds the embedder of the active model (``nova model switch``'s pointer): when the
            pointer changes, the next update takes the new model, its embedding cache and its collection
            (one catch-up reconcile: ``nova model build`` has filled it). None: ``embedder`` for good.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        tokenizer: Tokenizer | None = None,
        guard: DeletionGuard | None = None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        make_embedder: Callable[[], Embedder] | None = None,
    ):
        from nova_pipeline.core.serving.model_switch import active_stamp

        self.settings = settings
        self.embedder = embedder
        self._make_embedder = make_embedder
        self._model_stamp = active_stamp(settings.home) if make_embedder is not None else None
        self.tokenizer = tokenizer or Tokenizer()
        self.guard = guard or DeletionGuard()
        self.options = ScanOptions(
            root=settings.source_dir,
            max_file_size=max_file_size,
            extra_ignore=settings.ignore,
            exclude_dirs=settings.state_dirs_to_exclude(),
        )
        self.cache = EmbeddingCache(settings.home, embedder.fingerprint)
        self.manifest: pd.DataFrame | None = None
        self.binaries: pd.DataFrame | None = None
        self.chunks: pd.DataFrame | None = None
        self._stamps: tuple | None = None  # the tables as this process last read or wrote them
        self.client = WriterClient(settings)  # kept open between updates; lent to a searcher in-process
        self._base: tuple | None = None  # the lexical base's digest, ids (an Arrow array), and id set
        self._ids_by_path: dict[str, list[str]] = {}  # the chunk ids of each path in self.chunks
        self._delta: lexical_delta.Delta | None = None  # the lexical delta this process last wrote
        self._graph_pending: tuple | None = None  # (manifest, chunks) the code graph has not caught up with
        self.defer_graph = False  # True: the code graph waits for update_graph() (the watcher: a quiet tree)
        # the last update wrote a delta past COMPACT_ABOVE (a burst): compact() on the next quiet second
        self.fold_when_quiet = False

    # ---- state ------------------------------------------------------------------------------------

    def _table_stamps(self) -> tuple:
        home = self.settings.home
        return tuple(_stamp(table_path(home, n)) for n in (SOURCE_FILES, SOURCE_CHUNKS))

    def _load_tables(self) -> None:
        home = self.settings.home
        self.manifest = read_table(home, SOURCE_FILES)
        self.binaries = read_table(home, SOURCE_FILES_BINARIES)
        self._set_chunks(read_table(home, SOURCE_CHUNKS))
        self._stamps = self._table_stamps()
        self._delta = None  # recomputed whole by the catch-up that follows a load

    def _set_chunks(self, chunks: pd.DataFrame | None, plan: _Plan | None = None) -> None:
        """Take ``chunks`` as the table, and index its ids by path: in full, or for an update's ``plan``,
        only the changed paths again."""
        self.chunks = chunks
        if plan is not None and plan.fresh is not None:
            for path in plan.changed:
                self._ids_by_path.pop(path, None)
            rows = plan.fresh
        else:
            self._ids_by_path = {}
            rows = chunks
        if rows is not None:
            for path, chunk_id in zip(rows["path"].tolist(), rows["chunk_id"].tolist()):
                self._ids_by_path.setdefault(path, []).append(chunk_id)

    def _base_ids(self) -> tuple | None:
        path = lexical.current_path(self.settings.home)
        if path is None:
            return None
        if self._base is None or self._base[0] != path.name:
            meta = lexical.load(path).meta
            if not meta.get("avgdl"):  # built before live deltas: rebuild once
                return None
            import pyarrow.parquet as pq

            ids = (
                pq.read_table(path / "docs.parquet", columns=["chunk_id"]).column("chunk_id").combine_chunks()
            )
            self._base = (path.name, ids, None)
        return self._base

    def _in_base(self) -> frozenset[str]:
        """The base's chunk ids as a set (made once per base, on the first patched delta)."""
        name, ids, as_set = self._base
        if as_set is None:
            as_set = frozenset(ids.to_pylist())
            self._base = (name, ids, as_set)
        return as_set

    # ---- updates ----------------------------------------------------------------------------------

    def catch_up(self, first_event_at: float | None = None) -> UpdateReport:
        """Bring the index to the tree, reconciling against the collection's ids (at start, after a crash,
        or when another process wrote): like an unchanged rebuild, it embeds nothing already cached."""
        return self._apply(full=True, first_event_at=first_event_at)

    def update(self, first_event_at: float | None = None) -> UpdateReport:
        """Apply whatever changed in the tree since the last update (see the module docstring).

        Args:
            first_event_at: ``time.time()`` of the first file event this update answers (for the report).

        Returns:
            The :class:`UpdateReport`; ``refused`` says why when the guard refused (nothing was written).

        Raises:
            VectorStoreError: the vector store failed; everything committed so far stays.
            ScanError: the tree's root is gone or unreadable.
        """
        return self._apply(full=False, first_event_at=first_event_at)

    def _follow_model(self) -> None:
        """After ``nova model switch``: take the active model, its cache and (a catch-up) its collection."""
        from nova_pipeline.core.serving.model_switch import active_stamp

        stamp = active_stamp(self.settings.home) if self._make_embedder is not None else None
        if stamp == self._model_stamp:
            return
        self._model_stamp = stamp
        new = self._make_embedder()
        if new.fingerprint == self.embedder.fingerprint:
            return
        log.info(
            "the active model changed (%s -> %s): updates go to its collection from now on",
            self.embedder.fingerprint,
            new.fingerprint,
        )
        self.cache.close()
        self.embedder, self.cache = new, EmbeddingCache(self.settings.home, new.fingerprint)
        self._stamps = None  # the next update catches up: one reconcile of the new model's collection

    def _apply(self, full: bool, first_event_at: float | None) -> UpdateReport:
        self._follow_model()
        started_wall, started = time.time(), time.perf_counter()
        report = UpdateReport(first_event_at=first_event_at or started_wall)
        home = self.settings.home
        plan = None
        if not full and self._stamps is not None and self._stamps == self._table_stamps():
            # outside the lock: an event that changes nothing (an ignored file, a save of the same bytes)
            # takes no lock and marks no new generation; and the embedding, the slow part, happens before
            # the lock is taken, so the lock is held for the writes alone
            try:
                plan = self._plan(report)
            except MassDeletionError as exc:
                report.refused = str(exc)
                return report
            if plan is None:
                report.kind = "unchanged"
                return report
        report.phases["plan"] = time.perf_counter() - started
        mark = time.perf_counter()
        with self.client.writing() as store:
            report.phases["lock"] = time.perf_counter() - mark
            mark = time.perf_counter()
            if self._stamps is None or self._stamps != self._table_stamps():
                if self._stamps is not None:
                    log.info("the tables changed in another process since the last update: catching up")
                self._load_tables()
                full, plan = True, None
            collection = store.collection(self.embedder.fingerprint)
            try:
                if plan is None:
                    plan = self._plan(report, full=True)
                    if plan is None:
                        report.kind = "unchanged"
                        return report
                    self.guard.check_vectors(collection.count(), plan.count, collection.name)
            except MassDeletionError as exc:
                report.refused = str(exc)
                return report
            result = plan.result
            report.kind = "catch-up" if full else "update"
            # the document table first (lexical index and delta): a vector is never without its document
            report.lexical = self._lexical(plan)
            report.phases["lexical"] = time.perf_counter() - mark
            mark = time.perf_counter()
            try:
                if full:
                    self._reconcile_all(collection, plan.chunks, report)
                else:
                    self._write_difference(collection, plan, report)
            except MassDeletionError as exc:
                report.refused = str(exc)
                return report
            report.phases["write"] = time.perf_counter() - mark
            report.chunks = plan.count
            stamps_before = self._table_stamps()
        # the lock is released: a new generation is marked, and readers (nova serve) see the update now
        report.searchable_at = time.time()
        report.to_searchable_s = report.searchable_at - report.first_event_at
        report.update_s = time.perf_counter() - started
        # then the tables (a kill before they are written is repaired by the next start's catch-up) and
        # the store, under the lock again but marking no generation: readers see nothing new in them
        from nova_pipeline.core.locks import writer_lock

        chunks = self._table_of(plan)  # an update's whole chunk table, spliced only now
        with writer_lock(home, bump=False):
            if self._table_stamps() != stamps_before:  # another writer came in between: its turn to win
                self._stamps = None  # the next update catches up
            else:
                write_table(home, SOURCE_FILES, result.manifest)
                write_table(home, SOURCE_FILES_BINARIES, result.binaries)
                # the chunks of unchanged files are the table's: what made it (its chunker) still holds
                write_table(home, SOURCE_CHUNKS, chunks, attrs=table_attrs(home, SOURCE_CHUNKS) or {})
                self.manifest, self.binaries = result.manifest, result.binaries
                self._set_chunks(chunks, plan)
                self._stamps = self._table_stamps()
        self._store_contents(result.manifest, result.manifest[result.manifest["status"] != "unchanged"])
        self._update_graph(result.manifest, chunks, report)
        report.total_s = time.perf_counter() - started
        return report

    def _update_graph(self, manifest, chunks, report: UpdateReport) -> None:
        """The code graph after an update: now, or with ``defer_graph`` when :meth:`update_graph` is called
        (the watcher calls it once the tree is quiet)."""
        self._graph_pending = (manifest, chunks)
        if not self.defer_graph:
            took = self.update_graph()
            if took is not None:
                report.phases["graph"] = took

    @property
    def graph_pending(self) -> bool:
        """Whether an update since the last :meth:`update_graph` left the code graph behind."""
        return self._graph_pending is not None

    def update_graph(self) -> float | None:
        """Bring the code graph to the last update's tree, when a rebuild made one: the changed files parsed
        again and the calls whose answer may have changed resolved again (graph.build_graph) outside the
        lock, written under it unless another writer came in since. Returns the seconds it took, or None
        when nothing was done."""
        from nova_pipeline.core.index import graph
        from nova_pipeline.core.locks import writer_lock

        pending, self._graph_pending = self._graph_pending, None
        if pending is None or self._stamps is None or pending[1] is not self.chunks:
            return None  # nothing to do, or another writer won: the next catch-up brings it
        home = self.settings.layout
        kept = graph.kept_attrs(home)  # {}: tables written before their footers said what made them
        if kept is None or (kept and kept.get("graph_version") != graph.GRAPH_VERSION):
            return None  # no graph yet, or of another version or of two builds: the rebuild job builds it
        previous = [read_arrow(home, t) for t in graph.TABLES]
        if any(t is None for t in previous):
            return None  # removed meanwhile
        mark = time.perf_counter()
        manifest, chunks = pending
        *tables, stats = graph.build_graph(self.settings.source_dir, manifest, chunks, tuple(previous))
        # the digest the code_graph asset compares: the next rebuild finds the graph current
        digest = graph.inputs_digest(self.settings.source_dir, manifest, graph.chunk_spans_digest(chunks))
        with writer_lock(home, bump=False):
            if self._table_stamps() == self._stamps:
                graph.write_tables(home, tuple(tables), digest, stats.files_parsed + stats.files_reused)
        return time.perf_counter() - mark

    def _plan(self, report: UpdateReport, full: bool = False) -> _Plan | None:
        """Scan, consult the guard, chunk, and (for an update) embed what is new; None when nothing changed.

        A catch-up (``full``) chunks the tree against the whole previous table. An update chunks only the
        added and changed files and compares their chunk ids with the ones their paths had, so its cost
        follows the change, not the tree; the whole table is spliced after the update is searchable
        (:meth:`_table_of`).

        Raises:
            MassDeletionError: the guard refused (nothing was written).
        """
        self.guard.check_source_dir(self.settings.source_dir, self.manifest)
        result = scan(self.options, self.manifest, workers=1, known_binaries=self.binaries)
        self.guard.check_files(self.manifest, result.manifest)
        counts = result.stats.status_counts
        report.files = {k: int(counts.get(k, 0)) for k in ("added", "changed", "deleted")}
        changed = result.manifest[result.manifest["status"] != "unchanged"]
        report.paths = changed["path"].head(20).tolist()
        if not full and not len(changed):
            return None
        paths = frozenset(changed["path"].tolist())
        # a catch-up chunks the tree against the whole previous table; an update, only what changed
        chunks, _ = chunk_manifest(
            self.settings.source_dir,
            result.manifest if full else result.manifest[result.manifest["path"].isin(paths)],
            self.chunks if full else None,
            self.tokenizer.count,
            self.tokenizer.max_seq_length,
            lines_add_up=self.tokenizer.lines_add_up,
        )
        if full:
            return _Plan(result, chunks=chunks, count=len(chunks))
        fresh = chunks  # every chunk of the added and changed files
        before = {i for p in paths for i in self._ids_by_path.get(p, ())}
        fresh_ids = fresh["chunk_id"].tolist()
        new = fresh[np.array([i not in before for i in fresh_ids], dtype=bool)]
        gone = sorted(before.difference(fresh_ids))
        had = len(self.chunks) if self.chunks is not None else 0
        count = had - len(gone) + len(new)
        self.guard.check_vectors(had, count, "the live index")
        # fewest word pieces first across all batches, so each forward pass pads little (as reconcile does)
        new = new.iloc[np.argsort(new["n_tokens"].to_numpy(), kind="stable")]
        vecs = []
        for start in range(0, len(new), DEFAULT_BATCH):
            part = new.iloc[start : start + DEFAULT_BATCH]
            v, es = embed_with_cache(
                part["text"].tolist(), part["content_blake3"].tolist(), self.embedder, self.cache
            )
            vecs.append(np.asarray(v, dtype=np.float32))
            report.embedded += es.embedded
            report.cache_hits += es.cache_hits
        return _Plan(result, fresh=fresh, changed=paths, new=new, vecs=vecs, gone=gone, count=count)

    def _table_of(self, plan: _Plan) -> pd.DataFrame:
        """The whole chunk table after ``plan``: a catch-up's own, or the previous table with the changed
        paths' chunks replaced by their fresh ones (kept on the plan)."""
        if plan.chunks is None:
            plan.chunks = splice_chunks(self.chunks, plan.changed, plan.fresh)
        return plan.chunks

    def _reconcile_all(self, collection, chunks: pd.DataFrame, report: UpdateReport) -> None:
        from nova_pipeline.core.index.vector_store import other_schema_collection

        seed = other_schema_collection(
            self.client.client, self.embedder.fingerprint
        )  # a record-schema change
        stats = reconcile(collection, chunks, self.embedder, self.cache, guard=self.guard, seed=seed)
        report.chunks_added, report.chunks_deleted = stats.upserted, stats.deleted
        report.embedded, report.cache_hits = stats.embedded, stats.cache_hits

    def _write_difference(self, collection, plan, report: UpdateReport) -> None:
        new, vecs, gone = plan.new, plan.vecs, plan.gone
        for i, start in enumerate(range(0, len(new), DEFAULT_BATCH)):
            part = new.iloc[start : start + DEFAULT_BATCH]
            try:
                upsert_chunks(collection, part, vecs[i])
            except Exception as exc:  # noqa: BLE001 - whatever the store raised, named
                raise VectorStoreError(f"live upsert into {collection.name} failed: {exc}") from exc
        for start in range(0, len(gone), DEFAULT_BATCH):
            try:
                collection.delete(ids=gone[start : start + DEFAULT_BATCH])
            except Exception as exc:  # noqa: BLE001
                raise VectorStoreError(f"live delete from {collection.name} failed: {exc}") from exc
        report.chunks_added, report.chunks_deleted = len(new), len(gone)
        if len(new) or len(gone):
            self.client.record_writes(
                collection, new, np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32), gone
            )

    def _lexical(self, plan: _Plan) -> str:
        """Bring the lexical side to the plan's chunks: a delta against the base, or a rebuilt base. An
        update patches the delta this process last wrote with its own change (cost follows the change); a
        catch-up, or an update without such a delta, computes it from the whole chunk table."""
        home = self.settings.home
        base = self._base_ids()
        if base is not None:
            last = self._delta
            delta = None
            if plan.fresh is not None and last is not None and last.base == base[0]:
                delta = lexical_delta.patch(last, self._in_base(), plan.gone, plan.new)
            if delta is None:
                delta = lexical_delta.compute(base[1], self._table_of(plan), base[0])
            big = len(delta.added) > lexical_delta.COMPACT_ABOVE
            if not big or (plan.fresh is not None and len(delta.added) <= lexical_delta.DEFER_FOLD_UP_TO):
                lexical_delta.write(home, delta)
                self._delta = delta
                self.fold_when_quiet = big  # a burst: the base is rebuilt once it is searchable, not before
                return "unchanged" if delta.empty else f"delta (+{len(delta.added)} -{len(delta.removed)})"
        stats = lexical.update(home, self._table_of(plan))
        self._delta = lexical_delta.Delta(base=stats.digest)  # the base holds every chunk now
        self.fold_when_quiet = False
        return "rebuilt" if stats.built else "unchanged"

    def compact(self) -> bool:
        """Rebuild the lexical base from every chunk when a delta exists (the tree is quiet); whether it
        did. Under the writer lock."""
        from nova_pipeline.core.locks import writer_lock

        if self.chunks is None or lexical_delta.delta_stamp(self.settings.home) is None:
            self.fold_when_quiet = False
            return False
        with writer_lock(self.settings.home, bump=False):
            stats = lexical.update(self.settings.home, self.chunks)
        self._delta = lexical_delta.Delta(base=stats.digest)
        self.fold_when_quiet = False
        return True

    def _store_contents(self, manifest: pd.DataFrame, changed: pd.DataFrame) -> None:
        """Store the changed files' contents (committed under the writer lock; no garbage collection)."""
        from nova_pipeline.core.compression.store import ContentStore
        from nova_pipeline.core.ingest.manifest import unique_contents
        from nova_pipeline.core.locks import writer_lock

        present = changed[changed["status"] != "deleted"]
        if not len(present) or self.settings.source_dir is None:
            return
        store = ContentStore(self.settings.layout)
        info = store.registry.current()
        if info is None:  # no dictionary yet: the first rebuild stores everything
            return
        items = unique_contents(self.settings.source_dir, present)
        with writer_lock(self.settings.home, bump=False):
            rows, _ = store.put_many(items, info.blake3, level=info.level, threads=1)
            index = store.index()
            merged = pd.concat([index[~index["key"].isin(rows["key"])], rows], ignore_index=True)
            store.commit_index(merged)

    def close(self) -> None:
        self.client.close()
        self.cache.close()

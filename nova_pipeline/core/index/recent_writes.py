"""``nova watch``'s recent writes of the embedded primary, so that a separate reader keeps answering from the
view it has, exactly, while a fresh view loads.

A reader of an embedded store must open a new view after another process wrote
(:mod:`~nova_pipeline.core.serving.views`), and a view loads the collection's HNSW index on its first call:
0.8 to 1.3 s at 98,777 vectors (:mod:`~nova_pipeline.core.index.run_view`), about 1 s at 62,829 in
``bench_live``. A save that ``nova watch`` made searchable in 0.2 s then reached a separate ``nova serve``
after more than a second.

So each hold of the writer lock in which a ``nova watch`` update wrote the primary leaves one record,
``NOVA_HOME/vectors.writes/<before>.npz``, named by the generation the hold began at, and written under the
lock before the hold marks its new generation (:func:`~nova_pipeline.core.locks.writer_lock`'s
``before_release``). It holds:

* ``after``: the generation the hold marks;
* ``collection``: the data dir and collection written (:func:`store_key`: the runtime copy's collection has
  the primary's name, and its readers must never fold the primary's writes);
* ``removed``: the ids deleted;
* ``added``: the ids upserted, with their vectors (float32) and the metadata they were stored with.

A reader whose view is at generation ``G`` and finds the generation now ``C`` follows the records ``G ->
... -> C`` (:func:`chain`). When every step has a record of its collection and they add at most
:data:`MAX_OVERLAY` chunks, it answers from its view with them folded over it (:class:`Overlaid`) and opens
the fresh view in the background; otherwise it opens the fresh view first, as before. Any other writer (a
run, a catch-up, a restore, an admin route) leaves no record, so the chain breaks at its hold: a record never
stands for a write it does not describe. A ``kill -9`` after a record is written but before its generation
is marked leaves a record whose ``after`` never appears; the next hold begins at the same generation and
replaces it.

The writer keeps the newest :data:`KEEP` records and deletes the rest; a reader that finds a record gone
opens a fresh view. A hold that added more than :data:`MAX_OVERLAY` chunks (a burst) leaves no record, since
no reader could fold it. Size: about 1.6 KB per chunk added (384 float32 and a few ids), so a one-function
save writes a few kilobytes, and the directory never holds more than about 50 MB (32 records of 1,000
chunks).
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import VectorStoreError
from nova_pipeline.core.layout import Layout

__all__ = ["KEEP", "MAX_OVERLAY", "Overlaid", "Overlay", "chain", "matches", "record", "store_key"]

log = logging.getLogger(__name__)

KEEP = 32  # records kept: a reader more than this many holds behind opens a fresh view first
MAX_OVERLAY = 1000  # chunks added along a chain beyond which a reader opens a fresh view first


def store_key(home, data_dir: Path, collection) -> str:
    """``<data dir under home>:<collection name>`` (``vectors:...``, ``runtime/vectors:...``): what a record
    is of, and what a reader's view must be of to fold it."""
    where = os.path.relpath(Path(data_dir).resolve(), Layout.of(home).home.resolve())
    return f"{where}:{getattr(collection, 'name', '')}"


def record(
    home,
    before: str,
    after: str,
    collection: str,
    added_ids: Sequence[str],
    vectors: np.ndarray,
    metadatas: Sequence[dict],
    removed: Sequence[str],
) -> Path | None:
    """Write the record of one hold (module docstring) and delete all but the newest :data:`KEEP`; its path,
    or None for a hold that added more than :data:`MAX_OVERLAY` chunks. Called under the writer lock.
    ``vectors``: ``(len(added_ids), dimension)``.

    Raises:
        OSError: the record cannot be written (the caller logs it; readers then open a fresh view).
    """
    layout = Layout.of(home)
    path = layout.vectors_writes / f"{before or 'start'}.npz"
    if len(added_ids) > MAX_OVERLAY:  # no reader folds it: the chain breaks here, and readers open afresh
        path.unlink(missing_ok=True)
        return None
    buf = io.BytesIO()
    np.savez(
        buf,
        after=np.array(after),
        collection=np.array(collection),
        added=np.array(list(added_ids), dtype=str),
        vectors=np.asarray(vectors, dtype=np.float32).reshape(len(added_ids), -1 if len(added_ids) else 0),
        metadatas=np.array(json.dumps(list(metadatas))),
        removed=np.array(list(removed), dtype=str),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    _prune(layout.vectors_writes)
    return path


def _prune(directory: Path) -> None:
    kept = sorted(directory.glob("*.npz"), key=_mtime, reverse=True)
    for old in kept[KEEP:]:
        old.unlink(missing_ok=True)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


@dataclass
class Overlay:
    """Records folded in order: ``touched`` holds every id they deleted or upserted (a view's hit of one is
    out of date); ``ids`` the upserted ids still alive after them, with their vectors (the rows of
    ``vectors``, ``(len(ids), dimension)`` float32 of unit length) and ``metadatas``."""

    touched: frozenset[str]
    ids: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    metadatas: list[dict] = field(default_factory=list)


def chain(home, start: str, end: str, collection: str) -> Overlay | None:
    """The records from generation ``start`` to ``end`` folded into one :class:`Overlay`; None when a step
    has no record (another writer, or it was pruned), a record is of another collection or unreadable, or
    they add more than :data:`MAX_OVERLAY` chunks. At most :data:`KEEP` steps. A few milliseconds: one small
    file per step."""
    directory = Layout.of(home).vectors_writes
    at, steps = start, []
    while at != end:
        if len(steps) >= KEEP:
            return None
        path = directory / f"{at or 'start'}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                step = {k: z[k] for k in ("after", "collection", "added", "vectors", "metadatas", "removed")}
        except FileNotFoundError:  # no record of this hold (another writer), or pruned
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning(
                "the record of recent writes %s cannot be read (%s): opening a fresh view", path.name, exc
            )
            return None
        if str(step["collection"]) != collection:
            return None
        try:
            step["metadatas"] = json.loads(str(step["metadatas"]))
            consistent = len(step["vectors"]) == len(step["added"]) == len(step["metadatas"])
        except (ValueError, TypeError):  # not JSON, or not a list
            consistent = False
        if not consistent:
            log.warning("the record of recent writes %s is inconsistent: opening a fresh view", path.name)
            return None
        steps.append(step)
        at = str(step["after"])
    alive: dict[str, tuple[np.ndarray, dict]] = {}
    touched: set[str] = set()
    for step in steps:
        for cid in step["removed"].tolist():
            alive.pop(cid, None)
            touched.add(cid)
        for cid, vec, meta in zip(step["added"].tolist(), step["vectors"], step["metadatas"]):
            alive[cid] = (vec, meta)
            touched.add(cid)
        if len(alive) > MAX_OVERLAY:
            return None
    ids = list(alive)
    if not ids:
        return Overlay(frozenset(touched))
    vectors = np.array([alive[i][0] for i in ids], dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return Overlay(frozenset(touched), ids, vectors, [alive[i][1] for i in ids])


def matches(meta: dict, where: dict | None) -> bool:
    """Whether a record's metadata passes a Chroma ``where`` filter of the forms searches use (``$and``,
    ``$or``, and ``$eq``, ``$ne``, ``$in``, ``$nin`` or a bare value per key).

    Raises:
        VectorStoreError: an operator outside those (a filter this overlay cannot decide).
    """
    if not where:
        return True
    for key, cond in where.items():
        if key == "$and":
            ok = all(matches(meta, c) for c in cond)
        elif key == "$or":
            ok = any(matches(meta, c) for c in cond)
        elif not isinstance(cond, dict):
            ok = meta.get(key) == cond
        else:
            ok = all(_compare(meta.get(key), op, value) for op, value in cond.items())
        if not ok:
            return False
    return True


def _compare(have, op: str, value) -> bool:
    if op == "$eq":
        return have == value
    if op == "$ne":
        return have != value
    if op == "$in":
        return have in value
    if op == "$nin":
        return have not in value
    raise VectorStoreError(f"a recent-writes overlay cannot decide the filter operator {op!r}")


class Overlaid:
    """A collection of an older view with an :class:`Overlay` folded over it: :meth:`query` answers as a
    fresh view would (up to the approximation of the view's HNSW index); every other attribute is the
    view's collection's: ``count``, metadata and documents are read from Chroma's SQLite, which every view
    sees fresh."""

    def __init__(self, collection, overlay: Overlay):
        self._collection, self.overlay = collection, overlay

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def query(
        self,
        query_embeddings,
        n_results: int = 10,
        where: dict | None = None,
        include: Iterable[str] = ("metadatas", "distances"),
        **kwargs,
    ) -> dict:
        """Chroma's ``query`` answer (``ids``, ``distances``, ``metadatas``; one list per query vector, best
        first): the view's hits less every id the overlay touched, merged with the overlay's own chunks
        that pass ``where``, scored with the cosine distance the collection uses (``1 - cos``).

        Raises:
            VectorStoreError: ``include`` asks for more than ids, distances and metadatas, or ``where`` uses
                an operator :func:`matches` cannot decide.
            Whatever the view's ``query`` raises.
        """
        include = list(include)
        if set(include) - {"metadatas", "distances"} or kwargs:
            raise VectorStoreError("a recent-writes overlay answers ids, distances and metadatas only")
        ov = self.overlay
        vectors = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))
        base = self._collection.query(
            query_embeddings=vectors,
            n_results=n_results + len(ov.touched),
            where=where,
            include=["metadatas", "distances"],
        )
        keep = [i for i, m in enumerate(ov.metadatas) if matches(m, where)]
        mine = ov.vectors[keep] if keep else np.zeros((0, vectors.shape[1]), dtype=np.float32)
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        out = {"ids": [], "distances": [], "metadatas": []}
        for q, (ids, dists, metas) in enumerate(zip(base["ids"], base["distances"], base["metadatas"])):
            rows = [(float(d), i, m) for i, d, m in zip(ids, dists, metas) if i not in ov.touched]
            if keep:
                own = 1.0 - mine @ unit[q]
                rows += [(float(d), ov.ids[j], ov.metadatas[j]) for d, j in zip(own, keep)]
            rows.sort(key=lambda r: r[0])
            rows = rows[:n_results]
            out["ids"].append([r[1] for r in rows])
            out["distances"].append([r[0] for r in rows])
            out["metadatas"].append([r[2] for r in rows])
        return out

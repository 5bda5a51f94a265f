"""One view of the embedded primary store, shared by the steps of a run that execute in one process.

Chroma's embedded client loads a collection's HNSW index on a view's first read or write, whatever the call
(``count``, ``get`` by one id, ``query``): measured at 98,777 vectors, 0.8 to 1.3 s for that first call and
10 to 30 ms for the next. An in-process ``rebuild`` after a one-file edit opened three views of the primary
(the reconcile writer, the checks, the golden export), so it loaded the same index three times, and the
cost grows with the collection.

Between :func:`begin` and :func:`end` (the ``NovaSettings`` resource calls them around a run's steps in one
process), :func:`~nova_pipeline.core.index.vector_store.fresh_client` hands out the kept view of
``NOVA_HOME/vectors`` instead of opening a new one, as long as the view is current. A view is current when
the vector stores' generation (:func:`~nova_pipeline.core.locks.generation`) is still the one it saw:

* the generation when it was opened; or
* the one this process marked when it released the writer lock after a hold in which the view was handed
  to the lock's holder. Nothing else writes during a hold, since the lock excludes other threads and other
  processes.

Any other writer's release leaves the view behind: another process, ``nova watch``'s own client
(:class:`~nova_pipeline.core.live.client.WriterClient`), or a hold that wrote through another view. The
next :func:`fresh_client` then opens a new view. Outside :func:`begin` and :func:`end`, nothing is kept.
``nova serve``, sensors and the health probe get a new view every time, as before.

Lock order: this module's lock is taken after the writer lock, for bookkeeping only, and never while
waiting for another lock (:mod:`nova_pipeline.core.locks`, 5).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nova_pipeline.core.layout import Layout
from nova_pipeline.core.locks import generation, on_new_generation

__all__ = ["begin", "end", "forget", "give_back", "keep", "take"]


@dataclass
class _Kept:
    client: object
    close: Callable[[], None]  # closes the client and frees its view slot
    generation: str | None  # the generation it is current at (None: behind; closed once unused)
    handed_at: str | None = None  # the generation of the last writer-lock hold it was handed to
    users: int = 0


_lock = threading.Lock()
_depth = 0
_kept: dict[str, _Kept] = {}  # data dir -> its kept view


def begin() -> None:
    """Start sharing views in this process (nested calls count)."""
    global _depth
    with _lock:
        _depth += 1


def end() -> None:
    """Stop sharing once the outermost :func:`begin` ends: every kept view is closed."""
    global _depth
    with _lock:
        _depth = max(0, _depth - 1)
        closing = list(_kept.values()) if _depth == 0 else []
        if _depth == 0:
            _kept.clear()
    for k in closing:
        _close(k)


def take(where: Path, home: Layout, writer: bool) -> tuple[object, _Kept] | None:
    """The kept view of ``where`` when views are shared, ``where`` is ``home``'s primary data dir and the
    view is current; the caller holds the writer lock (the generation is read under it) and gives it back
    with :func:`give_back`. ``writer``: the caller held the writer lock before it took it for this call,
    so it may write through the view in this hold. None: open a new view."""
    gen = generation(home)
    with _lock:
        k = _kept.get(str(where))
        if _depth == 0 or k is None or k.generation != gen:
            return None
        k.users += 1
        if writer:
            k.handed_at = gen
        return k.client, k


def keep(where: Path, home: Layout, client, close: Callable[[], None], writer: bool) -> _Kept | None:
    """Keep the view ``client`` (just opened, under the writer lock) of ``home``'s primary data dir
    ``where``, in use by the caller (give it back with :func:`give_back`); ``close()`` closes it once it is
    no longer kept. None when views are not shared or ``where`` is another data dir (the caller closes it
    then). ``writer``: the caller holds the writer lock for writing."""
    if Path(where) != home.vectors:
        return None
    gen = generation(home)
    with _lock:
        if _depth == 0:
            return None
        old = _kept.get(str(where))
        k = _kept[str(where)] = _Kept(client, close, gen, gen if writer else None, users=1)
    if old is not None:
        old.generation = None
        _release(old)
    return k


def give_back(k: _Kept) -> None:
    """End one use of a kept view (a view that fell behind and is unused is closed)."""
    with _lock:
        k.users -= 1
    _release(k)


def forget(where: Path) -> None:
    """The data dir ``where`` is about to be replaced or copied: its kept view is closed once unused, and
    the next :func:`fresh_client` opens a new one."""
    with _lock:
        k = _kept.pop(str(Path(where)), None)
    if k is not None:
        k.generation = None
        _release(k)


def _release(k: _Kept) -> None:
    with _lock:
        close = k.users <= 0 and k.generation is None and all(v is not k for v in _kept.values())
    if close:
        _close(k)


def _close(k: _Kept) -> None:
    with contextlib.suppress(Exception):  # closing writes nothing; a half-open client releases nothing
        k.close()


def _new_generation(home: Layout, before: str, after: str) -> None:
    """After a writer's release in this process: the kept view of ``home``'s primary that was handed to that
    hold saw every write of it, so it is current at the new generation; another one is now behind."""
    with _lock:
        k = _kept.get(str(home.vectors))
        if k is None:
            return
        current = k.generation == before and k.handed_at == before
        k.generation = after if current else None
        if not current:  # no longer handed out: closed once its users are done (its HNSW index freed)
            _kept.pop(str(home.vectors), None)
    if not current:
        _release(k)


on_new_generation(_new_generation)

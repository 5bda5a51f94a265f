"""``nova watch``'s loop: file events in, live updates out, and the work that waits for a quiet tree.

Events come from :class:`~nova_pipeline.core.live.events.FileEvents` (``watchdog``: inotify on Linux, read
by a blocked thread; or polling where events are not available, ``force_polling``: network mounts, some
containers), filtered by :class:`~nova_pipeline.core.ingest.walk.PathFilter` (the scan's own ignore rules;
nothing under ``NOVA_HOME`` or ``DAGSTER_HOME``).

**Coalescing.** A batch ends once no new event came for ``settle_ms`` (20 ms: an editor's write-then-rename
is one batch), at most ``max_batch_ms`` after the first. Waking is pushed by the events, so the settle is
the whole wait from a write to its batch, and an idle watcher costs no CPU for it (measured figures in
:mod:`~nova_pipeline.core.live.events`). While an update runs, the observer keeps collecting events into
one set of paths, and the next iteration takes them all: events during an update become the next update,
not one update each, and a ``git checkout`` of 300 files is a handful of updates, each embedding across
files in one batch. Each update scans the whole tree's metadata anyway (a few ms per thousand files), so no
event can be lost between batches.

**Quiet time.** The code graph is not rebuilt per save: resolving every call of the tree again costs about
0.45 s at 110 files, and a save that lands meanwhile would wait for it. It follows on the first quiet tick
(a second without events), or after :data:`GRAPH_AT_LATEST_S` of saves without one. When no event came for
``compact_after_s`` (60 s), a lexical delta is folded into a rebuilt base; a burst that left a delta past
``COMPACT_ABOVE`` has it folded on the first quiet tick. After ``promote_after_s``
(``NOVA_LIVE_PROMOTE_AFTER``, 10 min) with updates since the last promotion, ``promote()`` runs once
(``nova watch`` starts a real ``rebuild`` run on the instance, which promotes a golden version): never per
save, which would push real restore points out of retention.

**Stopping.** :meth:`Watcher.stop` (``nova watch``'s first SIGINT or SIGTERM) ends the loop after the
current update; the caller exits at once on a second signal, which is safe: the next start catches up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.ingest.walk import PathFilter
from nova_pipeline.core.live.events import FileEvents
from nova_pipeline.core.live.report import UpdateReport
from nova_pipeline.core.live.updater import LiveIndex

__all__ = ["Watcher", "promote_after_s"]

log = logging.getLogger(__name__)


def promote_after_s(env=None) -> float:
    """``NOVA_LIVE_PROMOTE_AFTER`` in seconds (default 600).

    Raises:
        NovaError: it is not a number.
    """
    raw = ((os.environ if env is None else env).get("NOVA_LIVE_PROMOTE_AFTER") or "600").strip()
    try:
        return float(raw)
    except ValueError:
        raise NovaError(f"NOVA_LIVE_PROMOTE_AFTER={raw!r} is not a number of seconds") from None


class Watcher:
    """Keep a :class:`LiveIndex` live from file events until :meth:`stop`.

    Args:
        live: the index to update.
        on_report: called with each :class:`UpdateReport` (in the watcher's thread).
        settle_ms: quiet time that ends a batch of events.
        max_batch_ms: longest a batch collects before it is applied anyway.
        force_polling: poll the tree instead of reading file events (None or False: events).
        promote: called once per quiet period after updates (None: no promotion).
        promote_after_s: quiet seconds before ``promote``.
        compact_after_s: quiet seconds before a lexical delta is compacted.
    """

    def __init__(
        self,
        live: LiveIndex,
        on_report: Callable[[UpdateReport], None],
        settle_ms: int = 20,
        max_batch_ms: int = 1000,
        force_polling: bool | None = None,
        promote: Callable[[], None] | None = None,
        promote_after_s: float = 600.0,
        compact_after_s: float = 60.0,
    ):
        self.live = live
        self.on_report = on_report
        self.settle_ms, self.max_batch_ms = settle_ms, max_batch_ms
        self.force_polling = force_polling
        self.promote, self.promote_after_s, self.compact_after_s = promote, promote_after_s, compact_after_s
        self.filter = PathFilter(live.options)
        live.defer_graph = True  # the code graph follows once the tree is quiet (quiet_tasks), not per save
        self._graph_due: float | None = None  # when a deferred code graph update must run at the latest
        self._stop = threading.Event()
        self._events: FileEvents | None = None
        self.ready = threading.Event()  # set once the catch-up is done and events are watched
        self.updates = 0
        self.promotions = 0
        self._last_event = time.monotonic()
        self._dirty = False  # updates since the last promotion
        self._compacted = True

    def stop(self) -> None:
        """End the loop after the current update (at once when it is waiting for events)."""
        self._stop.set()
        if self._events is not None:
            self._events.wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _apply(self, first_event_at: float | None, catch_up: bool = False) -> None:
        try:
            report = self.live.catch_up(first_event_at) if catch_up else self.live.update(first_event_at)
        except NovaError as exc:  # a dead store, a vanished root: said, and watching goes on
            log.error("live update failed: %s", exc)
            report = UpdateReport(kind="failed", refused=str(exc))
        if report.changed:
            self.updates += 1
            self._dirty = True
            self._compacted = False
        if self.live.graph_pending and self._graph_due is None:
            self._graph_due = time.monotonic() + GRAPH_AT_LATEST_S
        elif self._graph_due is not None and time.monotonic() >= self._graph_due:
            self._update_graph()  # saves without a quiet second between them: not later than this
        if report.embedded >= TRIM_AFTER:
            _trim_heap()
        self.on_report(report)

    def _update_graph(self) -> None:
        self._graph_due = None
        try:
            took = self.live.update_graph()
        except (NovaError, OSError, SyntaxError, ValueError) as exc:
            log.error("updating the code graph failed: %s", exc)
            return
        if took is not None:
            log.info("code graph updated in %.2f s", took)

    def quiet_tasks(self, now: float | None = None) -> None:
        """The code graph (after a quiet tick), then compacting the lexical delta, then promotion, each
        once the tree has been quiet long enough."""
        if self.live.graph_pending:
            self._update_graph()
        quiet = (now if now is not None else time.monotonic()) - self._last_event
        if not self._compacted and (quiet >= self.compact_after_s or self.live.fold_when_quiet):
            try:
                self.live.compact()
            except (NovaError, OSError) as exc:
                log.error("compacting the lexical delta failed: %s", exc)
            self._compacted = True
        if self._dirty and self.promote is not None and quiet >= self.promote_after_s:
            self._dirty = False
            self.promotions += 1
            try:
                self.promote()
            except Exception as exc:  # noqa: BLE001 - a failed promotion is reported; watching goes on
                log.error("promotion after a quiet period failed: %s", exc)

    def run(self) -> None:
        """Catch up, then apply batches of events until :meth:`stop`.

        Raises:
            NovaError: the tree cannot be watched, or the file watcher's thread died.
        """
        self._apply(None, catch_up=True)
        events = FileEvents(
            str(self.live.settings.source_dir),
            self.filter.keeps,
            settle_s=self.settle_ms / 1000,
            max_batch_s=self.max_batch_ms / 1000,
            force_polling=self.force_polling,
        )
        with events:
            self._events = events
            self.ready.set()
            while not self._stop.is_set():
                paths = events.next(QUIET_TICK_S)
                if self._stop.is_set():
                    break
                if not paths:  # a quiet second
                    self.quiet_tasks()
                    continue
                received = time.time()
                self._last_event = time.monotonic()
                self._apply(_first_write(paths, received, self.max_batch_ms / 1000))
        if self.live.graph_pending:
            self._update_graph()  # what the last saves changed, before the process ends


GRAPH_AT_LATEST_S = 10.0  # saves with no quiet second between them still update the code graph this often
QUIET_TICK_S = 1.0  # how often an idle watcher looks for quiet-time work (a stop wakes it at once)
TRIM_AFTER = 64  # texts embedded in one update after which the freed heap is handed back to the system


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``): a burst's tensors leave the
    heap large but mostly free, and a long-running watcher should not keep that RSS (1.5 GB after a burst of
    4,000 chunks, 0.9 GB after a trim). Not available off glibc: then nothing is done."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _first_write(changes, received: float, window_s: float) -> float:
    """When the first change of a batch was written: the oldest mtime among its files, but not before the
    batch could have started collecting (a copied file keeps an old mtime)."""
    times = []
    for path in changes:
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            continue
    earliest = received - window_s - 0.1
    return max(min(times), earliest) if times else received

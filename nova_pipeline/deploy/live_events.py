"""What ``nova watch`` tells the Dagster instance: runless materializations of the assets it touched.

A live update is not a run (a run's bookkeeping alone costs more than the update), but the UI must show the
assets fresh, and their history each update. So the updates are reported with
``DagsterInstance.report_runless_asset_event(AssetMaterialization(...))`` for ``source_files``,
``source_chunks``, ``vector_index`` and ``lexical_index``, with the update's numbers as metadata.

Reporting never delays searchability: :class:`LiveEventReporter` takes reports from the watcher, and a
thread of its own writes them, **at most one event per asset per second**: the updates of that second are
summed into one (``updates``, ``chunks_added``, ...). A day of constant edits is thus at most 4 events per
second of editing; a working day with a save every 10 s is about 4 × 2,900 events, a few MB of event log.
"""

from __future__ import annotations

import logging
import threading
import time

import dagster as dg

from nova_pipeline.core.keys import LEXICAL_INDEX, SOURCE_CHUNKS, SOURCE_FILES, VECTOR_INDEX
from nova_pipeline.core.live.report import UpdateReport

__all__ = ["LIVE_ASSETS", "LiveEventReporter", "merge_metadata"]

log = logging.getLogger(__name__)

LIVE_ASSETS = (SOURCE_FILES, SOURCE_CHUNKS, VECTOR_INDEX, LEXICAL_INDEX)
_SUMMED = ("files_added", "files_changed", "files_deleted", "chunks_added", "chunks_deleted", "embedded")
_SUMMED += ("cache_hits",)


def merge_metadata(reports: list[UpdateReport]) -> dict:
    """The metadata of one event for ``reports`` (one second's updates): sums of the counts, the latest
    state, the slowest time to searchable."""
    last = reports[-1].metadata()
    out = {**last, "updates": len(reports), "live": True}
    for key in _SUMMED:
        out[key] = sum(int(r.metadata().get(key, 0)) for r in reports)
    out["to_searchable_s"] = max(r.to_searchable_s for r in reports)
    out["paths"] = sorted({p for r in reports for p in r.paths})[:20]
    return out


class LiveEventReporter:
    """Report live updates to ``instance`` as runless materializations, batched per second, from a thread.

    Args:
        instance: the Dagster instance (``DagsterInstance.get()``).
        interval_s: the least time between two events of one asset.
    """

    def __init__(self, instance: dg.DagsterInstance, interval_s: float = 1.0):
        self.instance, self.interval_s = instance, interval_s
        self._pending: list[UpdateReport] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.reported = 0  # events written
        self._thread = threading.Thread(target=self._run, name="live-events", daemon=True)
        self._thread.start()

    def submit(self, report: UpdateReport) -> None:
        """Queue ``report`` (only updates that changed something are reported)."""
        if not report.changed:
            return
        with self._lock:
            self._pending.append(report)
        self._wake.set()

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait()  # idle: asleep until a report or close() comes
            self._wake.clear()
            wait = self.interval_s - (time.monotonic() - last)
            if wait > 0 and self._stop.wait(wait):
                break
            if self.flush():
                last = time.monotonic()
        self.flush()

    def flush(self) -> bool:
        """Write the pending reports now, as one event per asset; whether there were any."""
        with self._lock:
            reports, self._pending = self._pending, []
        if not reports:
            return False
        metadata = merge_metadata(reports)
        for asset in LIVE_ASSETS:
            try:
                self.instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        asset_key=asset,
                        description=f"nova watch: {reports[-1].line()}",
                        metadata=metadata,
                    )
                )
                self.reported += 1
            except Exception as exc:  # noqa: BLE001 - the instance is a report target; the index is live anyway
                log.error("reporting the live update of %s to the Dagster instance failed: %s", asset, exc)
        return True

    def close(self) -> None:
        """Write what is pending and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

"""The events of a run, as they happen, for whoever runs it in this process (``nova rebuild``).

``nova_events`` is a Dagster logger: Dagster hands it every log record of a run, and the records of
Dagster events carry the event (``record.dagster_meta["dagster_event"]``): step starts and failures,
materializations with their metadata, check evaluations, and the progress observations the assets emit
(:func:`progress_reporter`). Its handler passes them to the subscribers registered with :func:`subscribe`
in the same process. A run launched elsewhere (the daemon, the UI) does not select this logger, and
``dagster job execute`` keeps Dagster's console logger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import dagster as dg

from nova_pipeline.core.keys import (
    COMPRESSED_STORE,
    COMPRESSION_DICTIONARY,
    FREQUENT_PATTERNS,
    GOLDEN_COPY,
    LEXICAL_INDEX,
    SOURCE_CHUNKS,
    SOURCE_FILES,
    VECTOR_INDEX,
)

PHASES = {  # step key -> the phase of a rebuild that nova rebuild, nova monitor and the admin API show
    SOURCE_FILES: "scan",
    FREQUENT_PATTERNS: "patterns",
    COMPRESSION_DICTIONARY: "dictionary",
    COMPRESSED_STORE: "compress",
    SOURCE_CHUNKS: "chunk",
    VECTOR_INDEX: "embed",
    LEXICAL_INDEX: "lexical",
    GOLDEN_COPY: "golden copy",
}
# vector_index is a graph of ops: plan_vector_slices, reconcile_vector_slice[slice_i], finish_vector_index.
# Its phase starts with the first and ends with the last.
LAST_STEP = {VECTOR_INDEX: "vector_index.finish_vector_index"}


def phase_of(step_key: str | None) -> tuple[str | None, bool, bool]:
    """``(phase, first, last)`` of a step key: the phase it belongs to, and whether it opens or closes it
    (both, for a phase of one step)."""
    key = step_key or ""
    asset = key.split(".", 1)[0]
    phase = PHASES.get(key) or (PHASES.get(asset) if "." in key and asset in LAST_STEP else None)
    if phase is None:
        return None, False, False
    last = LAST_STEP.get(asset, asset)
    return phase, key in (asset, f"{asset}.plan_vector_slices"), key == last


PHASE = "nova/phase"
DONE = "nova/done"
TOTAL = "nova/total"
UNIT = "nova/unit"
PART = "nova/part"  # one of several steps of a phase (a slice of vector_index): progress sums them
DONE_BYTES = "nova/done_bytes"
TOTAL_BYTES = "nova/total_bytes"

_subscribers: list[Callable[[logging.LogRecord], None]] = []
_lock = threading.Lock()


class _Dispatch(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        with _lock:
            subs = list(_subscribers)
        for sub in subs:
            try:
                sub(record)
            except Exception:  # noqa: BLE001 - a display must never break the run
                logging.getLogger(__name__).exception("a run-event subscriber failed")


_HANDLER = _Dispatch()


def subscribe(callback: Callable[[logging.LogRecord], None]) -> Callable[[], None]:
    """Receive every record of runs that select the ``nova_events`` logger; returns the unsubscribe."""
    with _lock:
        _subscribers.append(callback)

    def unsubscribe() -> None:
        with _lock:
            if callback in _subscribers:
                _subscribers.remove(callback)

    return unsubscribe


def dagster_event(record: logging.LogRecord):
    """The Dagster event a record carries, or None (a plain log message)."""
    meta = getattr(record, "dagster_meta", None) or {}
    return meta.get("dagster_event")


@dg.logger(description="Passes a run's events to subscribers in this process (nova rebuild's live display).")
def nova_events(init_context) -> logging.Logger:
    logger = logging.getLogger("nova_pipeline.deploy.run_events.stream")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
    return logger


def progress_reporter(context, phase: str, unit: str, min_interval: float = 0.5):
    """A ``(done, total, done_bytes=0, total_bytes=0)`` callback that emits progress as an observation of the
    asset being materialized, at most every ``min_interval`` seconds (and always the last one)."""
    last = [0.0]

    def report(done: int, total: int, done_bytes: int = 0, total_bytes: int = 0) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < min_interval:
            return
        last[0] = now
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                metadata={
                    PHASE: phase,
                    DONE: int(done),
                    TOTAL: int(total),
                    UNIT: unit,
                    DONE_BYTES: int(done_bytes),
                    TOTAL_BYTES: int(total_bytes),
                },
            )
        )

    return report

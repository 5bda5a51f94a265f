"""Query embeddings for many concurrent callers: one thread runs the model, on every query waiting at once.

A service answering several searches at a time would otherwise run one forward pass per query, each on every
core (torch's intra-op threads), one after the other (a fast tokenizer must not be used by two threads at
once). Batching the queries that arrive while the model is busy costs little more than one query: on this
machine all-MiniLM-L6-v2 embeds one short query in about 7 ms and eight in about 12 ms. A lone query is
embedded at once; nothing waits to fill a batch. Measured by ``benchmarks/bench_serve.py``.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading

import numpy as np

from nova_pipeline.core.index.embedding import Embedder

__all__ = ["QueryBatcher"]

MAX_BATCH = 32


class QueryBatcher:
    """Embeds queries for any number of threads through one model thread, batching the ones that wait.

    Args:
        model: the embedder (``embed(texts) -> (n, dimension)`` float32).
        max_batch: the most queries in one forward pass.
    """

    def __init__(self, model: Embedder, max_batch: int = MAX_BATCH):
        self.model, self.max_batch = model, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-embedder", daemon=True)
        self._thread.start()
        self.batches = 0  # forward passes so far
        self.queries = 0  # queries embedded so far

    def embed(self, text: str, timeout: float | None = None) -> np.ndarray:
        """The embedding of ``text``, ``(1, dimension)`` float32.

        Raises:
            TimeoutError: not embedded within ``timeout`` seconds.
            Whatever the model raised for the batch this query was in.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((text, future))
        return future.result(timeout)

    def close(self) -> None:
        """Stop the model thread (queries already waiting are embedded first)."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                vectors = self.model.embed([text for text, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the model's error
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.queries += len(batch)
            for i, (_, future) in enumerate(batch):
                future.set_result(vectors[i : i + 1])

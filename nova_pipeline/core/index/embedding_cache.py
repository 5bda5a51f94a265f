"""The embedding cache: ``(content blake3, model fingerprint)`` to a float32 vector.

One SQLite file per fingerprint under ``NOVA_HOME/cache/embeddings``. Each batch is one transaction, so a
killed run keeps every batch it finished, and a lost vector index rebuilds without re-embedding.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenacity

from nova_pipeline.core.index.embedding import Embedder
from nova_pipeline.core.layout import Layout

__all__ = ["EmbedStats", "EmbeddingCache", "embed_with_cache"]


class EmbeddingCache:
    """``content blake3 -> float32 vector`` for one model fingerprint, in SQLite (WAL, one commit per
    batch). One thread at a time (not necessarily the one that opened it: ``nova watch`` opens it in its
    main thread and updates in the watcher's)."""

    def __init__(self, home: Path, fingerprint: str):
        self.path = self.path_for(home, fingerprint)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._db.commit()

    @staticmethod
    def read_only(path: Path) -> sqlite3.Connection:
        """A read-only connection to a cache file that writes nothing when it can.

        With no ``-wal`` file every committed row is in the main file, and the file is opened ``immutable``
        (no lock, no side files). With one (a writer is running, or was killed before a checkpoint), the
        rows in it count: the file is opened ``mode=ro``, which may create the shared-memory ``-shm`` file.
        """
        if Path(f"{path}-wal").exists():
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)

    @staticmethod
    def path_for(home: Path, fingerprint: str) -> Path:
        """The SQLite file of a fingerprint's cache: ``NOVA_HOME/cache/embeddings/<fingerprint>.sqlite3``."""
        return Layout.of(home).embedding_cache(fingerprint)

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of ``keys`` (missing keys are absent from the result)."""
        out: dict[str, np.ndarray] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            q = f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})"
            for k, blob in self._db.execute(q, part):
                out[k] = np.frombuffer(blob, dtype=np.float32)
        return out

    @tenacity.retry(
        retry=tenacity.retry_if_exception(
            lambda e: isinstance(e, sqlite3.OperationalError) and "locked" in str(e)
        ),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
        stop=tenacity.stop_after_attempt(8),
        reraise=True,
    )
    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors in one transaction.

        Writers of several slices (processes, or Celery workers sharing ``NOVA_HOME``) share the file: WAL
        lets readers go on while one writes, the connection waits up to 60 s for the write lock, and a
        transaction that still finds the database locked is retried with jittered backoff (8 attempts).

        Raises:
            sqlite3.OperationalError: still locked after the retries, or any other SQLite failure.
        """
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vec) VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@dataclass
class EmbedStats:
    """Counts of :func:`embed_with_cache`. ``embedded`` counts model calls per unique text."""

    requested: int = 0
    unique: int = 0
    cache_hits: int = 0
    embedded: int = 0
    seconds: float = 0.0


def embed_with_cache(
    texts: Sequence[str],
    keys: Sequence[str],
    embedder: Embedder,
    cache: EmbeddingCache,
) -> tuple[np.ndarray, EmbedStats]:
    """Vectors for ``texts`` (keyed by their content blake3), embedding only what the cache lacks.

    Duplicate texts are embedded once. New vectors are committed to the cache before returning.
    """
    stats = EmbedStats(requested=len(texts))
    started = time.perf_counter()
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    stats.unique = len(first)
    cached = cache.get_many(list(first))
    stats.cache_hits = len(cached)
    missing = [k for k in first if k not in cached]
    if missing:
        vecs = embedder.embed([texts[first[k]] for k in missing])
        new = dict(zip(missing, vecs))
        cache.put_many(new)
        cached.update(new)
        stats.embedded = len(missing)
    out = np.stack([cached[k] for k in keys]) if keys else np.zeros((0, embedder.dimension), np.float32)
    stats.seconds = time.perf_counter() - started
    return out.astype(np.float32, copy=False), stats

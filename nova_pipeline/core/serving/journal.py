"""The write journal of a failover: ``NOVA_HOME/failover/journal/``.

While failed over, every upsert and delete of the pipeline goes to the backup store and, first, to the
journal (one fsynced Parquet file per batch, numbered). Failback replays it into the primary (idempotent:
ids are derived from content), so nothing is re-indexed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.layout import Layout

__all__ = ["Journal", "JournalingCollection"]


class Journal:
    """The write journal of a failover: ``NOVA_HOME/failover/journal/<seq>-<upsert|delete>.parquet``.

    Each entry is written (and fsynced) before the write it records reaches the backup store, so the journal
    never misses a change that the backup store has. Replaying an entry twice does no harm: ids are derived
    from content, an upsert of the same id writes the same row, a delete of a missing id does nothing.
    """

    def __init__(self, home):
        self.dir = Layout.of(home).failover / "journal"

    def _next(self) -> int:
        seqs = [int(p.name.split("-", 1)[0]) for p in self.dir.glob("*.parquet")] if self.dir.exists() else []
        return max(seqs, default=0) + 1

    def _write(self, op: str, table: pa.Table) -> Path:
        from nova_pipeline.core.protect.golden.export import table_bytes

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self._next():08d}-{op}.parquet"
        atomic_write_bytes(path, table_bytes(table))
        return path

    def upsert(self, ids, embeddings, documents=None, metadatas=None) -> None:
        documents = [None] * len(ids) if documents is None else documents
        mat = np.asarray(embeddings, dtype=np.float32)
        self._write(
            "upsert",
            pa.table(
                {
                    "id": pa.array(list(ids), pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(mat.ravel(), pa.float32()), mat.shape[1]
                    ),
                    "document": pa.array(list(documents), pa.string()),
                    "metadata": pa.array([json.dumps(m, sort_keys=True) for m in metadatas], pa.string()),
                }
            ),
        )

    def delete(self, ids) -> None:
        self._write("delete", pa.table({"id": pa.array(list(ids), pa.string())}))

    def entries(self) -> Iterator[tuple[int, str, pa.Table]]:
        """``(seq, op, table)`` in order."""
        from nova_pipeline.core.protect.golden.export import read_shard

        if not self.dir.exists():
            return
        for p in sorted(self.dir.glob("*.parquet")):
            seq, op = p.stem.split("-", 1)
            yield int(seq), op, read_shard(p)

    def summary(self) -> dict:
        """``{"upserts": ids upserted, "deletes": ids deleted, "entries": files}`` (ids counted with
        repeats)."""
        out = {"upserts": 0, "deletes": 0, "entries": 0}
        for _, op, t in self.entries():
            out["upserts" if op == "upsert" else "deletes"] += t.num_rows
            out["entries"] += 1
        return out

    def replay(self, collection, batch: int = 1000) -> tuple[int, int]:
        """Apply every entry, in order, to ``collection``; returns ``(upserted, deleted)`` ids."""
        from nova_pipeline.core.index.vector_store import upsert_records
        from nova_pipeline.core.protect.golden.export import embedding_matrix

        upserted = deleted = 0
        for _, op, t in self.entries():
            for start in range(0, t.num_rows, batch):
                part = t.slice(start, batch)
                ids = part.column("id").to_pylist()
                if op == "upsert":
                    upsert_records(
                        collection,
                        ids,
                        embedding_matrix(part),
                        part.column("document").to_pylist(),
                        [json.loads(m) for m in part.column("metadata").to_pylist()],
                    )
                    upserted += len(ids)
                else:
                    collection.delete(ids=ids)
                    deleted += len(ids)
        return upserted, deleted

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class JournalingCollection:
    """A Chroma collection whose writes are journaled first (write-ahead); reads pass through."""

    def __init__(self, collection, journal: Journal, on_first_write=None):
        self._collection = collection
        self._journal = journal
        self._on_first_write = on_first_write

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def _first_write(self) -> None:
        if self._on_first_write is not None:
            self._on_first_write()
            self._on_first_write = None

    def upsert(self, ids, embeddings, documents=None, metadatas=None):
        self._first_write()
        self._journal.upsert(ids, embeddings, documents, metadatas)
        docs = {} if documents is None else {"documents": documents}
        return self._collection.upsert(ids=ids, embeddings=embeddings, metadatas=metadatas, **docs)

    def delete(self, ids):
        self._first_write()
        self._journal.delete(ids)
        return self._collection.delete(ids=ids)

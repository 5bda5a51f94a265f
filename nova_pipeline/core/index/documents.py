"""The document table's texts: every chunk's text, by chunk, memory-mapped (the lexical index's ``texts/``).

The vector store keeps slim records (:mod:`~nova_pipeline.core.index.vector_store`), so search reads each
hit's text, lines and symbol from the lexical index's document table
(:meth:`~nova_pipeline.core.index.lexical.LexicalIndex.documents`). Its texts are :data:`TEXT_SHARDS`
uncompressed Arrow IPC files by the blake3 of the chunk's path, each holding its shard's texts in the
document table's row order: the same texts give the same bytes, and an edit of one file changes one shard,
so a golden version links the other 63 (as its export shards). Readers memory-map them: a lookup reads only
the pages of the rows asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import pandas as pd

from nova_pipeline.core.atomic import fsync_dir
from nova_pipeline.core.errors import NovaError

__all__ = ["TEXTS", "TEXT_SHARDS", "Document", "DocumentTableError", "map_texts", "text_shard", "write_texts"]

TEXTS = "texts"  # the directory of an index that holds them
TEXT_SHARDS = 64


class DocumentTableError(NovaError):
    """A texts file of the document table is unreadable or does not match the documents."""


@dataclass(frozen=True)
class Document:
    """One chunk of the document table: lines are 1-based and inclusive; ``text`` is None when the index
    predates stored texts."""

    chunk_id: str
    path: str
    start_line: int
    end_line: int
    symbol: str
    language: str
    text: str | None


def text_shard(path: str) -> int:
    """The texts shard of a chunk of file ``path``: its blake3 modulo :data:`TEXT_SHARDS`."""
    return int.from_bytes(blake3.blake3(path.encode()).digest(length=4), "big") % TEXT_SHARDS


def write_texts(where: Path, paths: pd.Series, texts: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The texts as :data:`TEXT_SHARDS` uncompressed Arrow IPC files ``where/part-NN.arrow`` (one ``text``
    column, large_string: no 2 GB limit), each holding its shard's texts in row order, fsynced; returns
    ``(shard, row within the shard)`` of every text. The same texts give the same bytes."""
    import pyarrow as pa

    where.mkdir()
    by_path = {p: text_shard(p) for p in pd.unique(paths)}
    shard = paths.map(by_path).to_numpy(dtype=np.uint8) if len(paths) else np.zeros(0, np.uint8)
    row = np.zeros(len(paths), dtype=np.int64)
    import pyarrow.compute as pc

    # as Arrow: no Python string per text (the chunk table's column is Arrow already)
    values = pc.fill_null(pa.chunked_array([pa.array(texts, pa.large_string())]), "")
    for s in range(TEXT_SHARDS):
        mine = np.flatnonzero(shard == s)
        row[mine] = np.arange(len(mine))
        table = pa.table({"text": values.take(pa.array(mine)).combine_chunks()})
        f = where / f"part-{s:02d}.arrow"
        with pa.OSFile(str(f), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 20)
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    fsync_dir(where)
    return shard, row


def map_texts(path: Path, docs: pd.DataFrame) -> list | None:
    """The ``text`` column of each ``texts/part-NN.arrow``, memory-mapped (None when there is no ``texts/``:
    an index built before it existed).

    Raises:
        DocumentTableError: a file is unreadable or holds another number of texts than its documents.
    """
    import pyarrow as pa

    where = path / TEXTS
    if not where.is_dir() or "text_shard" not in docs.columns:
        return None
    counts = np.bincount(docs["text_shard"].to_numpy(dtype=np.int64), minlength=TEXT_SHARDS)
    cols = []
    for s in range(TEXT_SHARDS):
        f = where / f"part-{s:02d}.arrow"
        try:
            col = pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all().column("text")
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise DocumentTableError(
                f"the texts of the lexical index at {path} cannot be read ({f.name}: {exc}): run the "
                "rebuild job, or `nova golden reset --yes`"
            ) from exc
        if len(col) != counts[s]:
            raise DocumentTableError(
                f"the lexical index at {path} has {counts[s]} documents in texts shard {s} but {len(col)} "
                "texts: run the rebuild job"
            )
        cols.append(col)
    return cols

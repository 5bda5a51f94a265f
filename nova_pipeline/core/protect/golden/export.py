"""The portable export of a golden version: the vectors in Parquet shards, at least ``EXPORT_SHARDS``.

``export/part-NN.parquet`` holds the chunks whose path falls in shard ``NN`` (blake3 of the path modulo the
version's shard count, :func:`export_shards`, kept in its ``model.json``): ``id, embedding (float32),
document, metadata (JSON)``; the same in both Chroma modes. A shard whose chunk ids did not change is
linked from CURRENT without being read from Chroma, so an edit of one file rewrites one shard. Applying an
export to a Chroma store is a diff (:func:`import_export`): ids are derived from content, so only missing
ids are upserted and extra ones deleted, without re-embedding.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import blake3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nova_pipeline.core.errors import GoldenCopyError
from nova_pipeline.core.index import lexical
from nova_pipeline.core.index.vector_store import existing_ids, mark_complete, upsert_records
from nova_pipeline.core.protect.golden.versions import LEXICAL_DELTA, LEXICAL_DIR

__all__ = [
    "EXPORT_DIR",
    "EXPORT_SHARDS",
    "FETCH_PAGE",
    "SHARD_CHUNKS",
    "chunks_from_export",
    "embedding_matrix",
    "export_files",
    "export_shards",
    "fetch_rows",
    "import_export",
    "read_shard",
    "lexical_failures",
    "restore_lexical",
    "shard_name",
    "shard_of",
    "table_bytes",
    "version_shards",
]

log = logging.getLogger(__name__)

EXPORT_DIR = "export"

EXPORT_SHARDS = 64  # the fewest shards; every version made before the count followed the tree has 64
# The chunks an export shard aims at. An edit rewrites its file's shard: the shard's vectors are fetched
# from Chroma, its texts read, its file written and verified, and the runtime copy diffs it. With 64 shards
# that grew with the tree: 5,300 chunks a shard at 10,000 files (1.4 s of a one-file edit's golden copy),
# 53,000 at 100,000.
SHARD_CHUNKS = 2048

FETCH_PAGE = 1000


def export_shards(chunks: int, previous: int | None = None) -> int:
    """The export shard count for ``chunks`` chunks: a power of two, at least :data:`EXPORT_SHARDS`, giving
    at most :data:`SHARD_CHUNKS` chunks a shard. ``previous`` (the count of CURRENT) is kept while it gives
    between half and twice :data:`SHARD_CHUNKS` (or is the least count): a tree that grows or shrinks by a
    file never moves every chunk to another shard, only one that halves or doubles does (then every shard
    is written once)."""
    if previous is not None and previous >= EXPORT_SHARDS:
        per = chunks / previous
        if per <= 2 * SHARD_CHUNKS and (per >= SHARD_CHUNKS / 2 or previous == EXPORT_SHARDS):
            return previous
    n = EXPORT_SHARDS
    while chunks > n * SHARD_CHUNKS:
        n *= 2
    return n


def version_shards(version_dir: Path) -> int | None:
    """The export shard count of the version at ``version_dir`` (:data:`EXPORT_SHARDS` for one made before
    the count was kept), or None when its ``model.json`` cannot be read."""
    try:
        n = json.loads((Path(version_dir) / "model.json").read_text()).get("export_shards", EXPORT_SHARDS)
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def shard_of(path: str, shards: int = EXPORT_SHARDS) -> int:
    """The export shard of a chunk of file ``path``: its blake3 modulo ``shards`` (:func:`export_shards`)."""
    return int.from_bytes(blake3.blake3(path.encode()).digest(length=4), "big") % shards


def shard_name(shard: int) -> str:
    return f"{EXPORT_DIR}/part-{shard:02d}.parquet"


def export_files(version_dir: Path) -> list[Path]:
    """The export's Parquet files of a version (both the sharded and the earlier one-file layout)."""
    return sorted((Path(version_dir) / EXPORT_DIR).glob("*.parquet"))


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column of an export table as a float32 matrix ``(rows, dimension)``."""
    col = table.column("embedding").combine_chunks()
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(len(table), -1) if len(table) else np.zeros((0, 0), dtype=np.float32)


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One export file as an Arrow table."""
    return pq.read_table(path, columns=columns)


def fetch_rows(collection, ids: list[str], chunks: pd.DataFrame | None = None) -> pa.Table:
    """``id, embedding, document, metadata`` of ``ids``, sorted by id: the vectors from ``collection``; the
    documents and metadata from ``chunks`` (the chunk table indexed by ``chunk_id``, with ``text`` and the
    metadata columns) when given, so an export holds full records whatever the collection's record schema
    (slim records carry no document), else from the collection too.

    Raises:
        GoldenCopyError: an id is not in the collection (the index does not match the chunks table).
    """
    from nova_pipeline.core.index.vector_store import full_metadata

    got_ids, embs, docs, metas = [], [], [], []
    include = ["embeddings"] if chunks is not None else ["embeddings", "documents", "metadatas"]
    for start in range(0, len(ids), FETCH_PAGE):
        got = collection.get(ids=ids[start : start + FETCH_PAGE], include=include)
        got_ids += got["ids"]
        embs.append(np.asarray(got["embeddings"], dtype=np.float32).reshape(len(got["ids"]), -1))
        if chunks is None:
            docs += got["documents"]
            metas += [json.dumps(m, sort_keys=True) for m in got["metadatas"]]
    missing = set(ids) - set(got_ids)
    if missing:
        raise GoldenCopyError(
            f"{collection.name} lacks {len(missing)} chunks of the chunks table (e.g. {sorted(missing)[0]}): "
            "run the rebuild job so that vector_index reconciles it"
        )
    if chunks is not None:
        rows = chunks.loc[got_ids].reset_index()
        docs = rows["text"].tolist()
        metas = [json.dumps(full_metadata(r), sort_keys=True) for r in rows.itertuples(index=False)]
    order = np.argsort(np.asarray(got_ids, dtype=object), kind="stable")
    mat = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
    dim = mat.shape[1] if mat.size else 0
    return pa.table(
        {
            "id": pa.array([got_ids[i] for i in order], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(mat[order].ravel(), pa.float32()), dim),
            "document": pa.array([docs[i] for i in order], pa.string()),
            "metadata": pa.array([metas[i] for i in order], pa.string()),
        }
    )


def table_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes of ``table`` (same rows, same library: same bytes, so same blake3)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def import_export(
    collection, version_dir: Path, batch: int = 1000, held: Path | None = None
) -> tuple[int, int]:
    """Make ``collection`` hold exactly a version's vectors, as a diff and without re-embedding.

    Ids are derived from content, so an id present on both sides is the same vector: only missing ids are
    upserted (shard by shard, each read only if it has any), then ids the export lacks are deleted.

    ``held``: another version's directory that ``collection`` is known to hold exactly (the runtime copy's
    record, which every other writer of it removes first). Then the collection is not listed: shards whose
    digest (``model.json``'s ``shards``, over the shard's ids and the model) is the same in both versions
    are skipped unread, and only the others are diffed, against ``held``'s shard (when both versions have
    the same shard count; otherwise the collection is listed). After a one-file edit at 300,000 chunks that
    is one shard of :func:`export_shards`, where listing the collection took 1.6 s.

    Returns:
        ``(upserted, deleted)``.
    """
    files = export_files(version_dir)
    old_shards = _shard_digests(held) if held is not None else None
    new_shards = _shard_digests(version_dir) if held is not None else None
    if held is not None and (
        old_shards is None or new_shards is None or version_shards(held) != version_shards(version_dir)
    ):
        # no digests to compare, or the chunks are in other shards (the count followed the tree): list
        # the collection (a shard-by-shard diff would upsert every chunk that moved, nearly all of them)
        held = None
    have: set[str] = set() if held is not None else existing_ids(collection)
    wanted: set[str] = set()
    stale: set[str] = set()
    upserted = 0
    for f in files:
        if held is not None:
            if new_shards.get(f.stem) == old_shards.get(f.stem):
                continue  # the same ids of the same model: the same vectors
            before = held / EXPORT_DIR / f.name
            have = set(read_shard(before, ["id"]).column("id").to_pylist()) if before.exists() else set()
        ids = read_shard(f, ["id"]).column("id").to_pylist()
        wanted.update(ids)
        if held is not None:
            stale |= have - set(ids)
        if all(i in have for i in ids):
            continue
        t = read_shard(f)
        keep = np.flatnonzero([i not in have for i in t.column("id").to_pylist()])
        t = t.take(pa.array(keep))
        mat = embedding_matrix(t)
        for start in range(0, len(t), batch):
            part = t.slice(start, batch)
            upsert_records(
                collection,
                part.column("id").to_pylist(),
                mat[start : start + len(part)],
                part.column("document").to_pylist(),
                [json.loads(m) for m in part.column("metadata").to_pylist()],
            )
        upserted += len(t)
    if held is not None:  # shards the held version has and this one lacks
        names = {f.name for f in files}
        for f in export_files(held):
            if f.name not in names:
                stale |= set(read_shard(f, ["id"]).column("id").to_pylist())
        stale_ids = sorted(stale - wanted)
    else:
        stale_ids = sorted(have - wanted)
    for start in range(0, len(stale_ids), batch):
        collection.delete(ids=stale_ids[start : start + batch])
    mark_complete(collection)
    return upserted, len(stale_ids)


def _shard_digests(version_dir: Path) -> dict[str, str] | None:
    """``{shard file stem: digest}`` of a version's ``model.json``, or None when it has none."""
    try:
        shards = json.loads((Path(version_dir) / "model.json").read_text()).get("shards")
    except (OSError, ValueError):
        return None
    if not isinstance(shards, dict):
        return None
    return {Path(shard_name(int(k))).stem: v for k, v in shards.items()}


def chunks_from_export(version_dir: Path) -> pd.DataFrame:
    """The chunks a golden version's export holds, as the table ``lexical.build`` indexes (ids, documents and
    their metadata); for a golden version made before lexical indexes were part of it."""
    frames = []
    for f in export_files(Path(version_dir)):
        t = read_shard(f, ["id", "document", "metadata"]).to_pandas()
        if len(t) and t["document"].isna().all():
            raise GoldenCopyError(
                f"the golden version {Path(version_dir).name} holds slim vector records, whose texts are in "
                "its lexical index only, and that index is missing or damaged: run the rebuild job to "
                "promote a new version"
            )
        meta = pd.DataFrame([json.loads(m) for m in t["metadata"]], index=t.index)
        frames.append(
            pd.DataFrame(
                {
                    "chunk_id": t["id"],
                    "text": t["document"].fillna(""),
                    "path": meta["path"],
                    "symbol": meta.get("symbol", pd.Series("", index=t.index)).fillna(""),
                    "language": meta["language"],
                    "start_line": meta["start_line"].astype("int64"),
                    "end_line": meta["end_line"].astype("int64"),
                    "content_blake3": meta["content_blake3"],
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: [] for c in ["chunk_id", "text", "content_blake3", *lexical.DOC_COLUMNS[1:]]})
    return pd.concat(frames, ignore_index=True).sort_values(["path", "start_line"], ignore_index=True)


def lexical_failures(version_dir: Path, ids: list[str]) -> list[str]:
    """Why a version's lexical index (``lexical/`` with ``lexical_delta.json`` applied, when there is one)
    does not hold exactly ``ids``; empty when it does."""
    from nova_pipeline.core.index import lexical_delta

    delta_file = Path(version_dir) / LEXICAL_DELTA
    delta = lexical_delta.read_file(delta_file) if delta_file.exists() else None
    if delta_file.exists() and delta is None:
        return [f"{LEXICAL_DELTA} of {Path(version_dir).name} cannot be read"]
    return lexical_delta.id_failures(Path(version_dir) / LEXICAL_DIR, ids, delta)


def restore_lexical(home: Path, version_dir: Path) -> lexical.BuildStats:
    """Make ``home``'s live lexical index the one of a golden version: installed from its ``lexical/`` (and
    its ``lexical_delta.json`` written as ``home``'s delta, when it has one), or built from its export when
    it has none (or the copy does not match the export).

    Raises:
        OSError: the index cannot be written.
    """
    from nova_pipeline.core.index import lexical_delta

    src = Path(version_dir) / LEXICAL_DIR
    if (src / lexical.META).exists():
        ids = [i for f in export_files(version_dir) for i in read_shard(f, ["id"]).column("id").to_pylist()]
        failures = lexical_failures(version_dir, ids)
        if not failures:
            stats = lexical.install(home, src)  # removes home's delta
            delta = lexical_delta.read_file(Path(version_dir) / LEXICAL_DELTA)
            if delta is not None:
                lexical_delta.write(home, delta)
            return stats
        log.warning("the golden lexical index does not match the export (%s): rebuilding it", failures[0])
    return lexical.update(home, chunks_from_export(version_dir))

"""Golden copies: verified, read-only, versioned snapshots of the built index, and the runtime copy made
from them.

A version lives in ``NOVA_HOME/golden/<version>/``::

    export/part-NN.parquet   the vectors, in EXPORT_SHARDS shards by blake3 of the chunk's path: id,
                             embedding (float32), document, metadata (JSON); portable, the same in both modes
    tables/*.parquet         the manifest and patterns tables
    store_index.parquet      the store's index (the objects themselves stay in the store, or go in backups)
    dictionaries/*.zdict     the dictionaries the store index refers to
    lexical/                 the BM25 index of the same chunks (core/lexical.py), when the rebuild made one
    model.json               model fingerprint, collection name, vector count, mode, per-shard digests,
                             the content key
    MANIFEST.json            blake3 and size of every file above; written last: the commit marker

**Only on change.** The content key is the blake3 of the model fingerprint, the chunk ids of every shard,
the store's keys and the dictionaries in use. When it equals CURRENT's and CURRENT verifies, nothing is
promoted: an unchanged nightly rebuild leaves the history (and its retention) alone.

**Shared files.** Versions are read-only, so a file whose bytes equal the same file of CURRENT is a hard
link to it (a copy across file systems). A shard whose chunk ids did not change is linked without even
being read from Chroma; an edit of one file rewrites one shard. Deleting a version unlinks its names
only: the files other versions share stay, with their read-only modes (:func:`remove_tree` never
``chmod``\\ s a file, since the inode is shared).

**Promotion** is built in ``golden/.partial-<version>/``, flushed (``syncfs``), verified (every shard
readable, counts and ids consistent, and a sample of vectors finding themselves as exact nearest
neighbours over all shards), made read-only, renamed into place, and only then does ``CURRENT`` switch
(atomically). A version without a manifest is never listed. Nothing writes into a golden version again:
resets and the runtime copy apply its export to a Chroma store as a diff (upsert what is missing, delete
what is extra), so a reset after a small change costs little, and a lost store rebuilds without
re-embedding.

Earlier versions (one ``export/vectors.parquet`` and a ``vectors/`` data-dir copy) stay readable: every
function here reads ``export/*.parquet``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nova_pipeline.core import audit, lexical
from nova_pipeline.core.atomic import atomic_write_bytes, fsync_dir, syncfs
from nova_pipeline.core.errors import ConfirmationRequired, GoldenCopyError
from nova_pipeline.core.guard import DeletionGuard
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.vector_store import (
    collection_name,
    existing_ids,
    get_collection,
    open_client,
    open_client_at,
    writer_lock,
)

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
MANIFEST = "MANIFEST.json"
PARTIAL_PREFIX = ".partial-"
DEFAULT_KEEP = 3
FORMAT = 2
EXPORT_DIR = "export"
LEXICAL_DIR = "lexical"
EXPORT_SHARDS = 64
FETCH_PAGE = 1000
TABLES = ("source_files", "frequent_patterns")


def golden_root(home: Path | Layout) -> Path:
    return Layout.of(home).golden


def shard_of(path: str) -> int:
    """The export shard of a chunk of file ``path``: its blake3 modulo :data:`EXPORT_SHARDS`."""
    return int.from_bytes(blake3.blake3(path.encode()).digest(length=4), "big") % EXPORT_SHARDS


def shard_name(shard: int) -> str:
    return f"{EXPORT_DIR}/part-{shard:02d}.parquet"


def export_files(version_dir: Path) -> list[Path]:
    """The export's Parquet files of a version (both the sharded and the earlier one-file layout)."""
    return sorted((Path(version_dir) / EXPORT_DIR).glob("*.parquet"))


def file_digest(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while block := fh.read(4 * 2**20):
            h.update(block)
    return h.hexdigest()


def read_manifest(version_dir: Path) -> dict:
    """The parsed ``MANIFEST.json`` of a version.

    Raises:
        GoldenCopyError: it is missing or unreadable.
    """
    try:
        return json.loads((Path(version_dir) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise GoldenCopyError(f"{Path(version_dir) / MANIFEST} is unreadable: {exc}") from exc


def verify_tree(root: Path, manifest: dict[str, dict] | None = None) -> list[str]:
    """Check every file of ``root`` against its manifest; one message per missing, changed or extra file."""
    root = Path(root)
    if manifest is None:
        try:
            manifest = json.loads((root / MANIFEST).read_text())["files"]
        except FileNotFoundError:
            return [f"{root / MANIFEST} is missing: {root} is not a committed golden version"]
        except (ValueError, KeyError) as exc:
            return [f"{root / MANIFEST} is unreadable ({exc})"]
    failures = []
    for rel, want in manifest.items():
        p = root / rel
        if not p.is_file():
            failures.append(f"{p} is missing")
        elif p.stat().st_size != want["size"] or file_digest(p) != want["blake3"]:
            failures.append(f"{p} was changed: its blake3 does not match {MANIFEST}")
    for p in root.rglob("*"):
        if p.is_file() and p.name != MANIFEST and p.relative_to(root).as_posix() not in manifest:
            failures.append(f"{p} is not in {MANIFEST}")
    return failures


def set_read_only(root: Path) -> None:
    """Files 0444, directories 0555."""
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    os.chmod(root, 0o555)


def remove_tree(root: Path) -> None:
    """Delete a (possibly read-only) tree. Only directories are made writable (unlinking a name needs a
    writable directory, not a writable file), so files it shares with other versions keep their mode."""
    root = Path(root)
    if not root.exists():
        return
    for d in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(d, 0o755)
    shutil.rmtree(root)


# ---- the export -------------------------------------------------------------------------------------------


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column of an export table as a float32 matrix ``(rows, dimension)``."""
    col = table.column("embedding").combine_chunks()
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(len(table), -1) if len(table) else np.zeros((0, 0), dtype=np.float32)


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One export file as an Arrow table."""
    return pq.read_table(path, columns=columns)


def fetch_rows(collection, ids: list[str]) -> pa.Table:
    """``id, embedding, document, metadata`` of ``ids`` from ``collection``, sorted by id.

    Raises:
        GoldenCopyError: an id is not in the collection (the index does not match the chunks table).
    """
    got_ids, embs, docs, metas = [], [], [], []
    for start in range(0, len(ids), FETCH_PAGE):
        got = collection.get(
            ids=ids[start : start + FETCH_PAGE], include=["embeddings", "documents", "metadatas"]
        )
        got_ids += got["ids"]
        embs.append(np.asarray(got["embeddings"], dtype=np.float32).reshape(len(got["ids"]), -1))
        docs += got["documents"]
        metas += [json.dumps(m, sort_keys=True) for m in got["metadatas"]]
    missing = set(ids) - set(got_ids)
    if missing:
        raise GoldenCopyError(
            f"{collection.name} lacks {len(missing)} chunks of the chunks table (e.g. {sorted(missing)[0]}): "
            "run the rebuild job so that vector_index reconciles it"
        )
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


def import_export(collection, version_dir: Path, batch: int = 1000) -> tuple[int, int]:
    """Make ``collection`` hold exactly a version's vectors, as a diff and without re-embedding.

    Ids are derived from content, so an id present on both sides is the same vector: only missing ids are
    upserted (shard by shard, each read only if it has any), then ids the export lacks are deleted.

    Returns:
        ``(upserted, deleted)``.
    """
    files = export_files(version_dir)
    have = existing_ids(collection)
    wanted: set[str] = set()
    upserted = 0
    for f in files:
        ids = read_shard(f, ["id"]).column("id").to_pylist()
        wanted.update(ids)
        if all(i in have for i in ids):
            continue
        t = read_shard(f)
        keep = np.flatnonzero([i not in have for i in t.column("id").to_pylist()])
        t = t.take(pa.array(keep))
        mat = embedding_matrix(t)
        for start in range(0, len(t), batch):
            part = t.slice(start, batch)
            collection.upsert(
                ids=part.column("id").to_pylist(),
                embeddings=mat[start : start + len(part)],
                documents=part.column("document").to_pylist(),
                metadatas=[json.loads(m) for m in part.column("metadata").to_pylist()],
            )
        upserted += len(t)
    stale = sorted(have - wanted)
    for start in range(0, len(stale), batch):
        collection.delete(ids=stale[start : start + batch])
    return upserted, len(stale)


def verify_export(version_dir: Path, sample: int = 25, seed: int = 0, cache=None) -> dict:
    """Check a version's export without a vector database.

    Every shard must be readable, ids unique, vectors finite with one dimension, the row count equal to
    ``model.json``'s count; ``sample`` vectors must each find themselves (or an identical vector: a
    duplicated text) as the exact nearest neighbour by cosine over every shard (a brute-force scan, one
    shard in memory at a time); and when ``cache`` (the :class:`EmbeddingCache` of the version's model) is
    given, each sampled vector must equal the cached vector of its content (the cache is what the model
    produced, so a vector damaged between the model and the export is caught).

    Returns:
        ``{"count": int, "expected": int, "failures": [str]}``.
    """
    version_dir = Path(version_dir)
    failures: list[str] = []
    try:
        model = json.loads((version_dir / "model.json").read_text())
    except (OSError, ValueError) as exc:
        return {
            "count": -1,
            "expected": -1,
            "failures": [f"{version_dir / 'model.json'} is unreadable: {exc}"],
        }
    files = export_files(version_dir)
    ids_per_file: list[list[str]] = []
    for f in files:
        try:
            ids_per_file.append(read_shard(f, ["id"]).column("id").to_pylist())
        except (OSError, pa.ArrowException) as exc:
            failures.append(f"{f} is unreadable: {exc}")
            ids_per_file.append([])
    count = sum(len(i) for i in ids_per_file)
    if count != model["count"]:
        failures.append(f"the export holds {count} vectors, model.json says {model['count']}")
    all_ids = [i for ids in ids_per_file for i in ids]
    if len(set(all_ids)) != len(all_ids):
        failures.append(f"the export repeats {len(all_ids) - len(set(all_ids))} ids")
    if (version_dir / LEXICAL_DIR / "meta.json").exists():  # the BM25 index must cover exactly the export
        from nova_pipeline.core import lexical

        failures += lexical.id_failures(version_dir / LEXICAL_DIR, all_ids)
    if failures or count == 0:
        return {"count": count, "expected": model["count"], "failures": failures}
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(count, size=min(sample, count), replace=False).tolist())
    offsets = np.cumsum([0] + [len(i) for i in ids_per_file])
    queries, query_ids, query_content = [], [], []
    for fi, f in enumerate(files):
        rows = [p - offsets[fi] for p in picks if offsets[fi] <= p < offsets[fi + 1]]
        if rows:
            t = read_shard(f, ["embedding", "metadata"])
            queries.append(embedding_matrix(t)[rows])
            query_ids += [ids_per_file[fi][r] for r in rows]
            metas = t.column("metadata").to_pylist()
            query_content += [json.loads(metas[r]).get("content_blake3", "") for r in rows]
    q = np.concatenate(queries)
    if cache is not None:
        cached = cache.get_many([c for c in query_content if c])
        for vec, cid, content in zip(q, query_ids, query_content):
            if content in cached and not np.allclose(cached[content], vec, atol=1e-6):
                failures.append(
                    f"chunk {cid}: its vector differs from the embedding cache's vector of its content"
                )
    self_sim = np.einsum("ij,ij->i", q, q)
    best = np.full(len(q), -np.inf)
    best_id: list[str] = [""] * len(q)
    dims: set[int] = set()
    for fi, f in enumerate(files):
        mat = embedding_matrix(read_shard(f, ["embedding"]))
        if not len(mat):
            continue
        dims.add(mat.shape[1])
        if mat.shape[1] != q.shape[1] or not np.isfinite(mat).all():
            failures.append(f"{f} holds vectors of dimension {mat.shape[1]} or non-finite values")
            continue
        sims = mat @ q.T
        top = sims.argmax(axis=0)
        for j, (row, val) in enumerate(zip(top, sims[top, np.arange(len(q))])):
            if val > best[j]:
                best[j], best_id[j] = val, ids_per_file[fi][row]
    for j, want in enumerate(query_ids):
        if best_id[j] != want and best[j] > self_sim[j] + 1e-5:
            failures.append(f"chunk {want} did not find itself first (found {best_id[j]})")
    return {"count": count, "expected": model["count"], "failures": failures}


def open_check(version_dir: Path, sample: int = 5) -> dict:
    """Load a version's export into a throwaway Chroma store and check count and self-retrieval.

    The proof that a restored copy works in the vector database itself; meant to run in a subprocess
    (:func:`open_check_in_subprocess`) because a crash in the vector library must not take the caller down.

    Returns:
        ``{"count": int, "expected": int, "failures": [str]}``.
    """
    version_dir = Path(version_dir)
    model = json.loads((version_dir / "model.json").read_text())
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nova-open-check-") as tmp:
        client = open_client_at(Path(tmp) / "vectors")
        col = client.get_or_create_collection(
            model["collection"], configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        import_export(col, version_dir)
        count = col.count()
        if count != model["count"]:
            failures.append(f"{model['collection']} holds {count} vectors, model.json says {model['count']}")
        files = [f for f in export_files(version_dir) if read_shard(f, ["id"]).num_rows]
        for f in files[:sample]:
            t = read_shard(f).slice(0, 1)
            res = col.query(query_embeddings=embedding_matrix(t), n_results=1, include=["documents"])
            want, doc = t.column("id")[0].as_py(), t.column("document")[0].as_py()
            got = res["ids"][0]
            if not got or (got[0] != want and res["documents"][0][0] != doc):
                failures.append(f"chunk {want} did not retrieve itself (got {got[0] if got else 'nothing'})")
    return {"count": count, "expected": model["count"], "failures": failures}


def open_check_in_subprocess(version_dir: Path, timeout: float = 600) -> dict:
    """:func:`open_check` in a separate Python process; a crash there is a failure here, not a crash."""
    proc = subprocess.run(
        [sys.executable, "-m", "nova_pipeline.core.golden", "open-check", str(version_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "count": -1,
            "expected": -1,
            "failures": [
                f"opening {version_dir} crashed the checker (exit {proc.returncode}): {' | '.join(tail)}"
            ],
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- versions ---------------------------------------------------------------------------------------------


@dataclass
class GoldenVersion:
    """A committed golden version. ``bytes`` counts every file, shared or not."""

    name: str
    path: Path
    created_at: str
    count: int
    files: int
    bytes: int
    content_key: str = ""


def list_versions(home: Path) -> list[GoldenVersion]:
    """Committed versions (those with a manifest), oldest first."""
    root = golden_root(home)
    out = []
    if not root.exists():
        return out
    for d in sorted(root.iterdir(), key=lambda p: stamp_key(p.name)):
        if not d.is_dir() or d.name.startswith(PARTIAL_PREFIX) or not (d / MANIFEST).exists():
            continue
        try:
            m = json.loads((d / MANIFEST).read_text())
        except ValueError:
            continue
        out.append(
            GoldenVersion(
                name=d.name,
                path=d,
                created_at=m["created_at"],
                count=m["count"],
                files=len(m["files"]),
                bytes=sum(f["size"] for f in m["files"].values()),
                content_key=m.get("content_key", ""),
            )
        )
    return out


def current_version(home: Path) -> GoldenVersion | None:
    """The version ``CURRENT`` points at, or None."""
    try:
        name = (golden_root(home) / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    for v in list_versions(home):
        if v.name == name:
            return v
    raise GoldenCopyError(
        f"{golden_root(home) / CURRENT} points at {name!r}, which is not a committed version"
    )


def referenced_store_entries(home: Path) -> tuple[set[str], set[str]]:
    """``(store keys, dictionary blake3s)`` that committed golden versions refer to; the store's garbage
    collection keeps both."""
    keys: set[str] = set()
    dictionaries: set[str] = set()
    for v in list_versions(home):
        idx = v.path / "store_index.parquet"
        if idx.exists():
            df = pd.read_parquet(idx, columns=["key", "dict_blake3"])
            keys.update(df["key"])
            dictionaries.update(d for d in df["dict_blake3"] if d)
    return keys, dictionaries


STAMP_RE = re.compile(r"^\d{8}T\d{6}Z(?:-\d+)?$")


def new_stamp(existing: Iterable[str]) -> str:
    """A UTC stamp ``YYYYmmddTHHMMSSZ`` that sorts after every stamp in ``existing``: the current second, or
    the newest existing stamp suffixed ``-2``, ``-3``… when that second (or a later one, if the clock went
    back) is taken. Never a name retention freed: names stay in creation order."""
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    newest = max((stamp_key(e) for e in existing if STAMP_RE.match(e)), default=None)
    if newest is None or base > newest[0]:
        return base
    return f"{newest[0]}-{newest[1] + 1}"


def stamp_key(stamp: str) -> tuple[str, int]:
    """Sort key of a stamp from :func:`new_stamp`: ``-10`` sorts after ``-9``, not between ``-1`` and
    ``-2``."""
    base, _, n = stamp.partition("-")
    return base, int(n) if n.isdigit() else 1


def _new_version_name(root: Path) -> str:
    return new_stamp(p.name.removeprefix(PARTIAL_PREFIX) for p in root.iterdir())


def shard_digests(chunk_ids: Iterable[str], paths: Iterable[str], fingerprint: str) -> dict[int, str]:
    """``{shard: blake3 of the fingerprint and the shard's sorted chunk ids}`` for the non-empty shards."""
    by_shard: dict[int, list[str]] = {}
    for cid, path in zip(chunk_ids, paths):
        by_shard.setdefault(shard_of(path), []).append(cid)
    return {
        s: blake3.blake3("\n".join([fingerprint, *sorted(ids)]).encode()).hexdigest()
        for s, ids in sorted(by_shard.items())
    }


def content_key(
    fingerprint: str,
    shards: dict[int, str],
    store_keys: Iterable[str],
    dictionaries: Iterable[str],
    lexical_digest: str | None = None,
) -> str:
    """blake3 over what a golden version must capture: model, chunk ids per shard, store keys,
    dictionaries and, when there is one, the lexical index's digest (:func:`lexical.chunks_digest`)."""
    fields = {
        "fingerprint": fingerprint,
        "shards": {str(k): v for k, v in sorted(shards.items())},
        "store": blake3.blake3("\n".join(sorted(store_keys)).encode()).hexdigest(),
        "dictionaries": sorted(dictionaries),
        "format": FORMAT,
    }
    if lexical_digest:
        fields["lexical"] = lexical_digest
    body = json.dumps(fields, sort_keys=True)
    return blake3.blake3(body.encode()).hexdigest()


@dataclass
class Promotion:
    """What :func:`promote` did. Bytes are bytes; ``seconds`` wall-clock.

    ``promoted`` is False when the index still matched CURRENT (``version`` is then CURRENT). Linked files
    are hard links to CURRENT's identical files: they cost a directory entry, not their bytes.
    """

    version: GoldenVersion
    promoted: bool
    reason: str
    bytes_written: int = 0
    bytes_linked: int = 0
    files_written: int = 0
    files_linked: int = 0
    shards_written: int = 0
    shards_linked: int = 0
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)


class _Placer:
    """Puts files into a staging version: a hard link to CURRENT's file when the bytes are the same."""

    def __init__(self, stage: Path, previous: Path | None, previous_files: dict[str, dict]):
        self.stage, self.previous, self.previous_files = stage, previous, previous_files
        self.files: dict[str, dict] = {}
        self.bytes_written = self.bytes_linked = self.files_written = self.files_linked = 0

    def can_link(self, rel: str) -> bool:
        return self.previous is not None and rel in self.previous_files

    def link(self, rel: str) -> None:
        """Link CURRENT's ``rel`` (recorded with CURRENT's digest); copy when a link is impossible."""
        src, dest = self.previous / rel, self.stage / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        want = self.previous_files[rel]
        try:
            os.link(src, dest)
            self.bytes_linked += want["size"]
            self.files_linked += 1
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            _write_file(dest, src.read_bytes())  # another file system, or links not allowed
            self.bytes_written += want["size"]
            self.files_written += 1
        self.files[rel] = {"blake3": want["blake3"], "size": want["size"]}

    def put(self, rel: str, data: bytes) -> None:
        digest = blake3.blake3(data).hexdigest()
        if self.can_link(rel) and self.previous_files[rel] == {"blake3": digest, "size": len(data)}:
            self.link(rel)
            return
        dest = self.stage / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_file(dest, data)
        self.files[rel] = {"blake3": digest, "size": len(data)}
        self.bytes_written += len(data)
        self.files_written += 1


def _write_file(path: Path, data: bytes) -> None:
    """Write a new staging file (flushed to disk later by one ``syncfs`` of the version)."""
    with open(path, "wb") as fh:
        fh.write(data)


def promote(
    home: Path,
    fingerprint: str,
    chroma_url: str | None = None,
    keep: int = DEFAULT_KEEP,
    chunks: pd.DataFrame | None = None,
    guard: DeletionGuard | None = None,
    checker: Callable[[Path], dict] | None = None,
    open_store: Callable[[], object] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Promotion:
    """Snapshot the index into a new golden version, verify it and make it CURRENT, unless nothing changed.

    Args:
        home: ``NOVA_HOME``.
        fingerprint: the model fingerprint (names the collection).
        chroma_url: the Chroma server, or None for the embedded store.
        keep: versions kept by retention (CURRENT is never removed).
        chunks: the ``source_chunks`` table the index was reconciled with (default: read from ``home``);
            it says which chunk ids each export shard holds.
        guard: refuses replacing a non-empty CURRENT with an empty index (default: a guard without override).
        checker: verifies the staged version before it is committed (default :func:`verify_export`, with
            the embedding cache of ``fingerprint`` when there is one).
        open_store: returns the Chroma client to snapshot, called only when a promotion is needed (default:
            the primary of ``home``/``chroma_url``; while failed over, the caller passes the active store's).
        progress: called as ``progress(shards_done, shards)`` as export shards are written or linked.

    Raises:
        GoldenCopyError: the collection does not match the chunks, or the snapshot failed verification;
            nothing is listed and CURRENT is unchanged.
        MassDeletionError: the guard refused an empty index.
    """
    from nova_pipeline.core.dictionary import DictionaryRegistry
    from nova_pipeline.core.store import ContentStore
    from nova_pipeline.core.tables import read_table, table_path

    started = time.perf_counter()
    home = Path(home)
    guard = guard or DeletionGuard()
    root = golden_root(home)
    root.mkdir(parents=True, exist_ok=True)
    _clean_partials(root)
    if chunks is None:
        chunks = read_table(home, "source_chunks")
        chunks = chunks if chunks is not None else pd.DataFrame({"chunk_id": [], "path": []})
    store = ContentStore(home)
    store_index = store.index()
    dictionaries = sorted(store.dictionaries_in_use()) if store.index_path.exists() else []
    digests = shard_digests(chunks["chunk_id"].tolist(), chunks["path"].tolist(), fingerprint)
    lexical_dir = _lexical_for(home, chunks)
    key = content_key(fingerprint, digests, store_index["key"].tolist(), dictionaries,
                      lexical_dir.name if lexical_dir is not None else None)

    cur = current_version(home)
    cur_failures = verify_tree(cur.path) if cur is not None else []
    if cur_failures:
        log.warning(
            "CURRENT %s does not verify (%s): promoting a new version without sharing its files",
            cur.name,
            cur_failures[0],
        )
    usable = cur if cur is not None and not cur_failures else None
    if usable is not None and usable.content_key == key:
        return Promotion(
            version=usable,
            promoted=False,
            reason=f"unchanged: CURRENT {usable.name} still matches",
            seconds=time.perf_counter() - started,
        )
    if cur is not None:
        guard.check_golden(cur.count, len(chunks), cur.name)
    prev_files = read_manifest(usable.path)["files"] if usable else {}
    prev_shards = json.loads((usable.path / "model.json").read_text()).get("shards", {}) if usable else {}

    name = _new_version_name(root)
    stage = root / f"{PARTIAL_PREFIX}{name}"
    stage.mkdir()
    placer = _Placer(stage, usable.path if usable else None, prev_files)
    shards_written = shards_linked = 0
    try:
        by_shard: dict[int, list[str]] = {}
        for cid, path in zip(chunks["chunk_id"].tolist(), chunks["path"].tolist()):
            by_shard.setdefault(shard_of(path), []).append(cid)
        with writer_lock(home):
            client = open_store() if open_store is not None else open_client(home, chroma_url)
            collection = get_collection(client, fingerprint, create=False)
            count = collection.count()
            if count != len(chunks):
                raise GoldenCopyError(
                    f"{collection.name} holds {count} vectors for {len(chunks)} chunks: run the rebuild job "
                    "(its blocking check vector_count_matches_chunks keeps such an index from being promoted)"
                )
            for shard, ids in sorted(by_shard.items()):
                rel = shard_name(shard)
                if prev_shards.get(str(shard)) == digests[shard] and placer.can_link(rel):
                    placer.link(rel)  # same chunk ids, same model: the same rows; not even read from Chroma
                    shards_linked += 1
                else:
                    placer.put(rel, table_bytes(fetch_rows(collection, sorted(ids))))
                    shards_written += 1
                if progress is not None:
                    progress(shards_written + shards_linked, len(by_shard))
        for t in TABLES:
            if table_path(home, t).exists():
                placer.put(f"tables/{t}.parquet", table_path(home, t).read_bytes())
        if store.index_path.exists():
            placer.put("store_index.parquet", store.index_path.read_bytes())
        if lexical_dir is not None:
            for f in lexical.index_files(lexical_dir):
                placer.put(f"{LEXICAL_DIR}/{f.name}", f.read_bytes())
        registry = DictionaryRegistry(home)
        for digest in dictionaries:
            placer.put(f"dictionaries/{registry.path(digest).name}", registry.path(digest).read_bytes())
        placer.put(
            "model.json",
            json.dumps(
                {
                    "fingerprint": fingerprint,
                    "collection": collection_name(fingerprint),
                    "count": count,
                    "mode": "server" if chroma_url else "embedded",
                    "format": FORMAT,
                    "content_key": key,
                    "shards": {str(k): v for k, v in digests.items()},
                    "lexical": lexical_dir.name if lexical_dir is not None else None,
                },
                indent=1,
            ).encode(),
        )
        syncfs(stage)
        result = checker(stage) if checker is not None else _verify_with_cache(stage, home, fingerprint)
        if result["failures"]:
            raise GoldenCopyError(
                f"golden copy {name} failed verification: {'; '.join(result['failures'][:3])}"
            )
        manifest = {
            "version": name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "count": count,
            "fingerprint": fingerprint,
            "content_key": key,
            "format": FORMAT,
            "files": dict(sorted(placer.files.items())),
        }
        atomic_write_bytes(stage / MANIFEST, json.dumps(manifest, indent=1).encode())
        set_read_only(stage)
        os.rename(stage, root / name)
        fsync_dir(root)
    except BaseException:
        remove_tree(stage)
        raise
    atomic_write_bytes(root / CURRENT, (name + "\n").encode())
    removed = apply_retention(home, keep)
    version = next(v for v in list_versions(home) if v.name == name)
    reason = "first golden version" if cur is None else f"changed since {cur.name}"
    log.info(
        "golden version %s: %s; wrote %d bytes, linked %d bytes",
        name,
        reason,
        placer.bytes_written,
        placer.bytes_linked,
    )
    return Promotion(
        version=version,
        promoted=True,
        reason=reason,
        bytes_written=placer.bytes_written,
        bytes_linked=placer.bytes_linked,
        files_written=placer.files_written,
        files_linked=placer.files_linked,
        shards_written=shards_written,
        shards_linked=shards_linked,
        seconds=time.perf_counter() - started,
        removed=removed,
    )


def _lexical_for(home: Path, chunks: pd.DataFrame) -> Path | None:
    """The live lexical index directory when it holds exactly ``chunks`` (else None, logged)."""
    path = lexical.current_path(home)
    if path is None or not set(lexical.DIGEST_COLUMNS) <= set(chunks.columns):
        return None
    if path.name != lexical.chunks_digest(chunks):
        log.warning("the lexical index %s does not index these chunks: left out of the golden copy", path)
        return None
    return path


def _verify_with_cache(stage: Path, home: Path, fingerprint: str) -> dict:
    from nova_pipeline.core.embedding import EmbeddingCache

    if not EmbeddingCache.path_for(home, fingerprint).exists():
        return verify_export(stage)
    cache = EmbeddingCache(home, fingerprint)
    try:
        return verify_export(stage, cache=cache)
    finally:
        cache.close()


def _clean_partials(root: Path) -> None:
    for d in root.glob(f"{PARTIAL_PREFIX}*"):
        log.warning("removing %s, left by an interrupted promotion", d)
        remove_tree(d)


def apply_retention(home: Path, keep: int) -> list[str]:
    """Delete the oldest versions beyond ``keep``; never CURRENT. Returns the names removed."""
    cur = current_version(home)
    versions = list_versions(home)
    removed = []
    for v in versions[: max(0, len(versions) - keep)]:
        if cur is not None and v.name == cur.name:
            continue
        remove_tree(v.path)
        removed.append(v.name)
    return removed


# ---- runtime copy and reset -------------------------------------------------------------------------------


@dataclass
class Applied:
    """A version applied to a Chroma store: where, which version, and the diff it took."""

    path: str
    version: str
    count: int
    upserted: int
    deleted: int
    rebuilt: bool
    seconds: float


def _require_current(home: Path) -> GoldenVersion:
    cur = current_version(home)
    if cur is None:
        raise GoldenCopyError("no golden copy yet: run the rebuild job, whose last step promotes one")
    return cur


def _apply_to_data_dir(version: GoldenVersion, dest: Path) -> Applied:
    """Make the embedded store at ``dest`` hold exactly ``version``: a diff when it opens, else a fresh
    store built beside it and swapped in by rename."""
    started = time.perf_counter()
    model = json.loads((version.path / "model.json").read_text())
    rebuilt = False
    try:
        col = get_collection(open_client_at(dest), model["fingerprint"])
        upserted, deleted = import_export(col, version.path)
        count = col.count()
    except Exception as exc:  # noqa: BLE001 - a damaged data dir raises anything; rebuild it from the export
        log.warning(
            "the Chroma store at %s cannot be updated (%s): rebuilding it from %s", dest, exc, version.name
        )
        rebuilt = True
        new = dest.with_name(dest.name + ".new")
        _forget_cached_clients()
        remove_tree(new)
        col = get_collection(open_client_at(new), model["fingerprint"])
        upserted, deleted = import_export(col, version.path)
        count = col.count()
        _forget_cached_clients()
        old = dest.with_name(dest.name + ".old")
        remove_tree(old)
        if dest.exists():
            os.rename(dest, old)
        os.rename(new, dest)
        fsync_dir(dest.parent)
        remove_tree(old)
        _forget_cached_clients()
    if count != model["count"]:
        raise GoldenCopyError(
            f"{dest} holds {count} vectors after applying {version.name}, which has {model['count']}"
        )
    return Applied(
        path=str(dest),
        version=version.name,
        count=count,
        upserted=upserted,
        deleted=deleted,
        rebuilt=rebuilt,
        seconds=time.perf_counter() - started,
    )


def runtime_dir(home: Path | Layout) -> Path:
    return Layout.of(home).runtime_vectors


def make_runtime_copy(home: Path, force: bool = False) -> Applied:
    """Bring ``NOVA_HOME/runtime/vectors``, a writable embedded Chroma store, to the CURRENT version.

    In both modes (it is the local stand-in for a dead server). After a small change it costs a small
    diff; when ``runtime/version.json`` already names CURRENT it costs nothing, unless ``force`` (whoever
    writes into the runtime copy, e.g. while failed over, removes that record first).

    Raises:
        GoldenCopyError: there is no golden copy, or the store does not hold the version's count after.
    """
    cur = _require_current(home)
    dest = runtime_dir(home)
    held = runtime_version(home)
    if not force and held is not None and held.get("version") == cur.name and dest.is_dir():
        return Applied(
            path=str(dest),
            version=cur.name,
            count=int(held.get("count", cur.count)),
            upserted=0,
            deleted=0,
            rebuilt=False,
            seconds=0.0,
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    Layout.of(home).runtime_version.unlink(missing_ok=True)
    applied = _apply_to_data_dir(cur, dest)
    atomic_write_bytes(
        Layout.of(home).runtime_version,
        json.dumps({"version": cur.name, "created_at": cur.created_at, "count": applied.count}).encode(),
    )
    return applied


def runtime_version(home: Path) -> dict | None:
    """``{"version", "created_at", "count"}`` of the golden version the runtime copy holds, or None."""
    try:
        return json.loads(Layout.of(home).runtime_version.read_text())
    except (OSError, ValueError):
        return None


def reset_index(home: Path, chroma_url: str | None, confirm: bool, who: str) -> dict:
    """Bring the primary index back to CURRENT without re-embedding, and audit it.

    The export is applied as a diff (server mode: into the server's collection; embedded mode: into
    ``NOVA_HOME/vectors``, rebuilt beside and swapped in when the data dir cannot be opened).

    Raises:
        ConfirmationRequired: ``confirm`` is False.
        GoldenCopyError: there is no golden copy, or it fails verification.
    """
    if not confirm:
        audit.record(home, "reset_index", "refused: confirm is not true", who)
        raise ConfirmationRequired(
            "resetting the index replaces it from the golden copy: pass confirm: true "
            "(nova golden reset --yes)"
        )
    cur = current_version(home)
    if cur is None:
        audit.record(home, "reset_index", "failed: no golden copy", who)
        raise GoldenCopyError("no golden copy yet: run the rebuild job, whose last step promotes one")
    failures = verify_tree(cur.path)
    if failures:
        audit.record(
            home,
            "reset_index",
            "failed: golden copy does not verify",
            who,
            version=cur.name,
            failures=failures[:5],
        )
        raise GoldenCopyError(f"golden version {cur.name} does not verify: {'; '.join(failures[:3])}")
    model = json.loads((cur.path / "model.json").read_text())
    with writer_lock(home):
        if chroma_url:
            col = get_collection(open_client(home, chroma_url), model["fingerprint"])
            upserted, deleted = import_export(col, cur.path)
            details = {"mode": "server", "upserted": upserted, "deleted": deleted}
        else:
            applied = _apply_to_data_dir(cur, Layout.of(home).vectors)
            details = {
                "mode": "embedded (rebuilt)" if applied.rebuilt else "embedded",
                "upserted": applied.upserted,
                "deleted": applied.deleted,
            }
    count = get_collection(open_client(home, chroma_url), model["fingerprint"], create=False).count()
    lex = lexical.restore_from_golden(home, cur.path)
    how = "installed" if (cur.path / LEXICAL_DIR).exists() else "rebuilt from the export"
    details["lexical"] = f"{lex.docs} documents, {how}"
    outcome = "ok" if count == model["count"] else f"count {count} != {model['count']}"
    return audit.record(home, "reset_index", outcome, who, version=cur.name, count=count, **details)


def _forget_cached_clients() -> None:
    """Chroma caches one system per data dir and process; drop it before and after swapping the dir."""
    with contextlib.suppress(Exception):
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "open-check":
        print(json.dumps(open_check(Path(argv[1]))))
        return 0
    print("usage: python -m nova_pipeline.core.golden open-check VERSION_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

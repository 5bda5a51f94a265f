"""Promotion: snapshot the built index into a new golden version, verify it, switch ``CURRENT``.

A version holds::

    export/part-NN.parquet   the vectors (:mod:`.export`)
    tables/*.parquet         the manifest, patterns and code graph tables
    store_index.parquet      the store's index (the objects themselves stay in the store, or go in backups)
    dictionaries/*.zdict     the dictionaries the store index refers to
    lexical/                 the BM25 index of the same chunks, when the rebuild made one: its base,
    lexical_delta.json       and the live delta against it, when there is one (core/index/lexical_delta.py)
    model.json               model fingerprint, collection name, vector count, mode, per-shard digests,
                             the content key
    MANIFEST.json            blake3 and size of every file above; written last: the commit marker

**Only on change.** The content key is the blake3 of the model fingerprint, the chunk ids of every shard,
the store's keys and the dictionaries in use. When it equals CURRENT's and CURRENT verifies, nothing is
promoted: an unchanged nightly rebuild leaves the history (and its retention) alone.

**Shared files.** A file whose bytes equal the same file of CURRENT is a hard link to it (a copy across file
systems).

**Promotion** is built in ``golden/.partial-<version>/``, flushed (``syncfs``), verified (every shard
readable, counts and ids consistent, and a sample of vectors finding themselves as exact nearest neighbours
over all shards), made read-only, renamed into place, and only then does ``CURRENT`` switch (atomically).
The version's store objects are pinned in the store (its GC roots) before it is committed, and unpinned
when retention removes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pandas as pd

from nova_pipeline.core.atomic import atomic_write_bytes, fsync_dir, syncfs
from nova_pipeline.core.compression.dictionary import DictionaryRegistry
from nova_pipeline.core.compression.store import ContentStore
from nova_pipeline.core.errors import GoldenCopyError
from nova_pipeline.core.index import lexical
from nova_pipeline.core.index.chunking import read_texts
from nova_pipeline.core.index.vector_store import (
    collection_name,
    fresh_client,
    get_collection,
)
from nova_pipeline.core.keys import FREQUENT_PATTERNS, SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.locks import writer_lock
from nova_pipeline.core.protect.golden.export import (
    EXPORT_SHARDS,
    export_shards,
    fetch_rows,
    shard_name,
    shard_of,
    table_bytes,
    version_shards,
)
from nova_pipeline.core.protect.golden.verify import verify_tree, verify_with_cache
from nova_pipeline.core.protect.golden.versions import (
    CURRENT,
    DEFAULT_KEEP,
    LEXICAL_DELTA,
    LEXICAL_DIR,
    MANIFEST,
    PARTIAL_PREFIX,
    VERIFIED,
    GoldenVersion,
    apply_retention,
    clean_partials,
    current_version,
    golden_root,
    list_versions,
    new_version_name,
    pin_name,
    pin_version,
    read_manifest,
    remove_tree,
    set_read_only,
    sync_pins,
)
from nova_pipeline.core.protect.guard import DeletionGuard
from nova_pipeline.core.tables import (
    CODE_NAMES,
    CODE_RELATIONS,
    CODE_SYMBOLS,
    in_set,
    memo,
    read_table,
    row_count,
    table_path,
)

__all__ = ["FORMAT", "TABLES", "Promotion", "content_key", "promote", "shard_digests"]

log = logging.getLogger(__name__)


FORMAT = 2

TABLES = (SOURCE_FILES, FREQUENT_PATTERNS, CODE_SYMBOLS, CODE_RELATIONS, CODE_NAMES)


def _ids_by_shard(
    chunk_ids: Iterable[str], paths: Iterable[str], shards: int = EXPORT_SHARDS
) -> dict[int, list[str]]:
    """``{export shard: its chunk ids}`` over ``shards`` shards (:func:`export_shards`), hashing each path
    once, not each chunk (a file has about 30)."""
    by_shard: dict[int, list[str]] = {}
    shard_by_path: dict[str, int] = {}
    for cid, path in zip(chunk_ids, paths):
        shard = shard_by_path.get(path)
        if shard is None:
            shard = shard_by_path[path] = shard_of(path, shards)
        by_shard.setdefault(shard, []).append(cid)
    return by_shard


def shard_digests(
    chunk_ids: Iterable[str], paths: Iterable[str], fingerprint: str, shards: int = EXPORT_SHARDS
) -> dict[int, str]:
    """``{shard: blake3 of the fingerprint and the shard's sorted chunk ids}`` for the non-empty shards of
    ``shards`` (:func:`export_shards`)."""
    by_shard = _ids_by_shard(chunk_ids, paths, shards)
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
    open_store: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Promotion:
    """Snapshot the index into a new golden version, verify it and make it CURRENT, unless nothing changed.

    Args:
        home: ``NOVA_HOME``.
        fingerprint: the model fingerprint (names the collection).
        chroma_url: the Chroma server, or None for the embedded store.
        keep: versions kept by retention (CURRENT is never removed).
        chunks: the ``source_chunks`` table the index was reconciled with; it says which chunk ids each
            export shard holds. Default: ``home``'s table, read only when a version is made (the digests
            that decide it are kept per version of the table, :func:`~nova_pipeline.core.tables.memo`).
        guard: refuses replacing a non-empty CURRENT with an empty index (default: a guard without override).
        checker: verifies the staged version before it is committed (default :func:`verify_export`, with
            the embedding cache of ``fingerprint`` when there is one).
        open_store: returns a context manager yielding the Chroma client to snapshot; entered under the writer
            lock, only when a promotion is needed (default: a fresh client of the primary of
            ``home``/``chroma_url``; the pipeline passes the active store's, read from the failover pointer
            under the same lock).
        progress: called as ``progress(shards_done, shards)`` as export shards are written or linked.

    Raises:
        GoldenCopyError: the collection does not match the chunks, or the snapshot failed verification;
            nothing is listed and CURRENT is unchanged.
        MassDeletionError: the guard refused an empty index.
    """
    started = time.perf_counter()
    home = Path(home)
    guard = guard or DeletionGuard()
    root = golden_root(home)
    root.mkdir(parents=True, exist_ok=True)
    clean_partials(root)
    sync_pins(home)  # every committed version pinned in the store, no pin without a version
    store = ContentStore(home)
    store_index = store.index()
    dictionaries = sorted(store.dictionaries_in_use()) if store.index_path.exists() else []
    cur = current_version(home)
    n_chunks = len(chunks) if chunks is not None else (row_count(home, SOURCE_CHUNKS) or 0)
    shards = export_shards(n_chunks, version_shards(cur.path) if cur is not None else None)
    if chunks is None:  # the chunks table, read only when a version is made: an unchanged run reads none
        digests, lexical_digest = _kept_digests(home, fingerprint, shards)
        chunks_now = lambda: _table(home)  # noqa: E731
    else:
        digests = shard_digests(chunks["chunk_id"].tolist(), chunks["path"].tolist(), fingerprint, shards)
        has_columns = set(lexical.DIGEST_COLUMNS) <= set(chunks.columns)
        lexical_digest = lexical.chunks_digest(chunks) if has_columns else None
        chunks_now = lambda: chunks  # noqa: E731
    lexical_dir, lexical_delta_bytes = _lexical_for(home, lexical_digest, lambda: chunks_now()["chunk_id"])
    lexical_key = None
    if lexical_dir is not None:
        lexical_key = lexical_dir.name
        if lexical_delta_bytes is not None:
            lexical_key += "+" + blake3.blake3(lexical_delta_bytes).hexdigest()
    key = content_key(fingerprint, digests, store_index["key"].tolist(), dictionaries, lexical_key)

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
    chunks = chunks_now()
    if cur is not None:
        guard.check_golden(cur.count, len(chunks), cur.name)
    prev_files = read_manifest(usable.path)["files"] if usable else {}
    prev_model = json.loads((usable.path / "model.json").read_text()) if usable else {}
    prev_shards = prev_model.get("shards", {})

    name = new_version_name(root)
    stage = root / f"{PARTIAL_PREFIX}{name}"
    stage.mkdir()
    placer = _Placer(stage, usable.path if usable else None, prev_files)
    shards_written = shards_linked = 0
    try:
        by_shard = _ids_by_shard(chunks["chunk_id"].tolist(), chunks["path"].tolist(), shards)
        opener = open_store or (lambda: fresh_client(home, chroma_url, create=False))
        with writer_lock(home), opener() as client:
            collection = get_collection(client, fingerprint, create=False)
            count = collection.count()
            if count != len(chunks):
                raise GoldenCopyError(
                    f"{collection.name} holds {count} vectors for {len(chunks)} chunks: run the rebuild job "
                    "(its blocking check vector_count_matches_chunks keeps such an index from being promoted)"
                )
            linked = {
                shard
                for shard in by_shard
                if prev_shards.get(str(shard)) == digests[shard] and placer.can_link(shard_name(shard))
            }
            # the texts and metadata of the chunks of the shards to write (only theirs are read)
            rows = _export_rows(
                home, chunks, [i for s, ids in by_shard.items() if s not in linked for i in ids]
            )
            for shard, ids in sorted(by_shard.items()):
                rel = shard_name(shard)
                if shard in linked:
                    placer.link(rel)  # same chunk ids, same model: the same rows; not even read from Chroma
                    shards_linked += 1
                else:
                    placer.put(rel, table_bytes(fetch_rows(collection, sorted(ids), rows)))
                    shards_written += 1
                if progress is not None:
                    progress(shards_written + shards_linked, len(by_shard))
        for t in TABLES:
            if table_path(home, t).exists():
                placer.put(f"tables/{t}.parquet", table_path(home, t).read_bytes())
        if store.index_path.exists():
            placer.put("store_index.parquet", store.index_path.read_bytes())
        if lexical_dir is not None:
            # a base directory is named by the digest of its chunks: CURRENT's of the same name has the
            # same files, linked without reading them (as export shards of the same ids)
            same_base = prev_model.get("lexical") == lexical_dir.name
            for f in lexical.index_files(lexical_dir):
                rel = f"{LEXICAL_DIR}/{f.relative_to(lexical_dir).as_posix()}"
                if same_base and placer.can_link(rel):
                    placer.link(rel)
                else:
                    placer.put(rel, f.read_bytes())
            if lexical_delta_bytes is not None:
                placer.put(LEXICAL_DELTA, lexical_delta_bytes)
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
                    "export_shards": shards,
                    "lexical": lexical_dir.name if lexical_dir is not None else None,
                    "lexical_delta": lexical_delta_bytes is not None,
                },
                indent=1,
            ).encode(),
        )
        syncfs(stage)
        known = _known_files(usable.path, placer.files) if usable is not None else {}
        result = checker(stage) if checker is not None else verify_with_cache(stage, home, fingerprint, known)
        if result["failures"]:
            raise GoldenCopyError(
                f"golden copy {name} failed verification: {'; '.join(result['failures'][:3])}"
            )
        if result.get("shards"):  # what was verified, for the next promotion (covered by the manifest)
            found = {
                r: {**f, "blake3": placer.files[r]["blake3"]} for r, f in sorted(result["shards"].items())
            }
            placer.put(VERIFIED, json.dumps({"files": found}, indent=1).encode())
            syncfs(stage)
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
        pin_version(home, stage)  # before the commit: a committed version always has its objects pinned
        set_read_only(stage)
        os.rename(stage, root / name)
        fsync_dir(root)
    except BaseException:
        remove_tree(stage)
        if not (root / name / MANIFEST).exists():
            store.unpin(pin_name(name))
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


def _known_files(previous: Path, files: dict[str, dict]) -> dict[str, dict]:
    """What verifying CURRENT (``previous``, which verified against its manifest when this promotion began)
    found of its export files (:data:`VERIFIED`), for the staged ``files`` with the same bytes: linked, or
    written again with the same blake3. Empty for a version made before the record existed."""
    try:
        recorded = json.loads((previous / VERIFIED).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        rel: f
        for rel, f in recorded.items()
        if isinstance(f, dict) and f.get("blake3") and files.get(rel, {}).get("blake3") == f["blake3"]
    }


def _export_rows(home: Path, chunks: pd.DataFrame, ids: list[str]) -> pd.DataFrame | None:
    """The rows of ``chunks`` whose id is in ``ids``, with their texts, indexed by ``chunk_id``: the documents
    and metadata of the export shards to write (the vectors come from Chroma, whose slim records hold
    neither). Only those rows' texts are read from the chunks table. None when ``chunks`` lacks a column
    (the collection's own records are exported then)."""
    need = {"chunk_id", "path", "start_line", "end_line", "symbol", "language", "content_blake3"}
    if not need <= set(chunks.columns):
        return None
    rows = chunks[in_set(chunks["chunk_id"], ids)].drop_duplicates("chunk_id")
    if "text" not in rows.columns and len(rows):
        texts = read_texts(home, chunks, rows["chunk_id"].tolist())
        if texts is None:
            return None
        rows = rows.merge(texts, on="chunk_id", how="left")
    return rows.set_index("chunk_id")


def _lexical_for(
    home: Path, digest: str | None, chunk_ids: Callable[[], Iterable[str]]
) -> tuple[Path | None, bytes | None]:
    """``(base directory, delta file's bytes or None)`` of the live lexical index when, with its delta, it
    holds exactly the chunks of ``digest`` (:func:`~nova_pipeline.core.index.lexical.chunks_digest`; their ids
    from ``chunk_ids()``, read only for a delta without a digest); ``(None, None)`` otherwise (logged): the
    version then has no lexical index. ``digest`` None: the chunks lack the digest's columns."""
    from nova_pipeline.core.index import lexical_delta

    if lexical.current_path(home) is None or digest is None:
        return None, None
    held = lexical_delta.holding(home, digest, chunk_ids)
    if held is None:
        log.warning("the live lexical index does not index these chunks: left out of the golden copy")
        return None, None
    return held


def _table(home: Path) -> pd.DataFrame:
    """The chunks table's :data:`~nova_pipeline.core.index.chunking.META_COLUMNS` (texts are read as
    needed), or an empty table."""
    from nova_pipeline.core.index.chunking import META_COLUMNS

    chunks = read_table(home, SOURCE_CHUNKS, META_COLUMNS)
    return chunks if chunks is not None else pd.DataFrame({c: [] for c in META_COLUMNS})


def _kept_digests(home: Path, fingerprint: str, n: int) -> tuple[dict[int, str], str | None]:
    """``(shard digests over n shards, lexical digest)`` of the chunks table, each computed once per version
    of the table (:func:`~nova_pipeline.core.tables.memo`; the lexical digest is the one ``lexical_index``
    keeps)."""

    def shards() -> dict[str, str]:
        t = read_table(home, SOURCE_CHUNKS, ["chunk_id", "path"])
        if t is None:
            return {}
        return {
            str(k): v
            for k, v in shard_digests(t["chunk_id"].tolist(), t["path"].tolist(), fingerprint, n).items()
        }

    kind = f"golden.shard_digests/{fingerprint}" + (f"/{n}" if n != EXPORT_SHARDS else "")
    kept = memo(home, SOURCE_CHUNKS, kind, shards)
    return {int(k): v for k, v in kept.items()}, lexical.kept_digest(home)

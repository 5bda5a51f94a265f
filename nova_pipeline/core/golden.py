"""Golden copies: verified, read-only, versioned snapshots of the built index, and the runtime copy made from them.

A version lives in ``NOVA_HOME/golden/<version>/``::

    vectors/                 embedded mode: a copy of the Chroma data dir, taken under the writer lock
    export/vectors.parquet   both modes: ids, embeddings, documents, metadata (portable; server mode's snapshot)
    tables/*.parquet         the manifest, chunks and patterns tables
    store_index.parquet      the store's index (the objects themselves stay in the store, or go in backups)
    dictionaries/*.zdict     the dictionaries the store index refers to
    model.json               model fingerprint, collection name, vector count, mode
    MANIFEST.json            blake3 and size of every file above; written last: the commit marker

It is built in ``golden/.partial-<version>/``, verified by opening it in a subprocess (so a crash in the
vector library cannot take the run down), made read-only, renamed into place, and only then does the
``CURRENT`` pointer switch (atomically). A version without a manifest is never listed. Nothing writes into a
golden version again: resets copy *out* of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import pandas as pd

from nova_pipeline.core import audit
from nova_pipeline.core.atomic import atomic_write_bytes, fsync_dir
from nova_pipeline.core.errors import ConfirmationRequired, GoldenCopyError
from nova_pipeline.core.vector_store import collection_name, get_collection, open_client, writer_lock

log = logging.getLogger(__name__)

GOLDEN = "golden"
CURRENT = "CURRENT"
MANIFEST = "MANIFEST.json"
PARTIAL_PREFIX = ".partial-"
DEFAULT_KEEP = 3
EXPORT_PAGE = 1000
TABLES = ("source_files", "source_chunks", "frequent_patterns")


def golden_root(home: Path) -> Path:
    return Path(home) / GOLDEN


def file_digest(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while block := fh.read(4 * 2**20):
            h.update(block)
    return h.hexdigest()


def build_manifest(root: Path) -> dict[str, dict]:
    """``{relative path: {"blake3", "size"}}`` of every file under ``root`` except the manifest."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(root).as_posix()] = {"blake3": file_digest(p), "size": p.stat().st_size}
    return files


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


def make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, (p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | (stat.S_IXUSR if p.is_dir() else 0)))


def remove_tree(root: Path) -> None:
    """Delete a (possibly read-only) tree."""
    if root.exists():
        make_writable(root)
        shutil.rmtree(root)


def export_collection(collection, dest: Path) -> int:
    """Page through a collection into a Parquet file: ``id, embedding, document, metadata`` (JSON)."""
    rows_id, rows_emb, rows_doc, rows_meta = [], [], [], []
    offset = 0
    while True:
        got = collection.get(include=["embeddings", "documents", "metadatas"], limit=EXPORT_PAGE, offset=offset)
        ids = got["ids"]
        rows_id += ids
        rows_emb += [np.asarray(e, dtype=np.float32).tolist() for e in got["embeddings"]]
        rows_doc += got["documents"]
        rows_meta += [json.dumps(m, sort_keys=True) for m in got["metadatas"]]
        if len(ids) < EXPORT_PAGE:
            break
        offset += len(ids)
    df = pd.DataFrame({"id": rows_id, "embedding": rows_emb, "document": rows_doc, "metadata": rows_meta})
    dest.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(dest, index=False)
    return len(df)


def import_export(collection, export: Path, batch: int = 1000) -> tuple[int, int]:
    """Make ``collection`` hold exactly the export's vectors (no re-embedding). Returns (upserted, deleted)."""
    from nova_pipeline.core.vector_store import existing_ids

    df = pd.read_parquet(export)
    have = existing_ids(collection)
    todo = df[~df["id"].isin(have)]
    for start in range(0, len(todo), batch):
        part = todo.iloc[start : start + batch]
        collection.upsert(ids=part["id"].tolist(), embeddings=np.stack(part["embedding"].to_numpy()).astype(np.float32),
                          documents=part["document"].tolist(), metadatas=[json.loads(m) for m in part["metadata"]])
    stale = sorted(have - set(df["id"]))
    for start in range(0, len(stale), batch):
        collection.delete(ids=stale[start : start + batch])
    return len(todo), len(stale)


def open_check(version_dir: Path, sample: int = 5) -> dict:
    """Open a version's vectors and check count and self-retrieval. Meant to run in a subprocess.

    Embedded copies are opened from a temporary copy of ``vectors/`` (Chroma writes even when reading);
    server-mode versions are loaded from the export into a throwaway local store.

    Returns:
        ``{"count": int, "expected": int, "failures": [str]}``.
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    version_dir = Path(version_dir)
    model = json.loads((version_dir / "model.json").read_text())
    export = pd.read_parquet(version_dir / "export" / "vectors.parquet")
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nova-open-check-") as tmp:
        client_dir = Path(tmp) / "vectors"
        if (version_dir / "vectors").is_dir():
            shutil.copytree(version_dir / "vectors", client_dir)
            make_writable(client_dir)
            client = chromadb.PersistentClient(str(client_dir), settings=ChromaSettings(anonymized_telemetry=False))
            col = client.get_collection(model["collection"], embedding_function=None)
        else:
            client = chromadb.PersistentClient(str(client_dir), settings=ChromaSettings(anonymized_telemetry=False))
            col = client.get_or_create_collection(model["collection"], configuration={"hnsw": {"space": "cosine"}},
                                                  embedding_function=None)
            import_export(col, version_dir / "export" / "vectors.parquet")
        count = col.count()
        if count != model["count"]:
            failures.append(f"{model['collection']} holds {count} vectors, model.json says {model['count']}")
        if len(export):
            part = export.sample(n=min(sample, len(export)), random_state=0)
            res = col.query(query_embeddings=np.stack(part["embedding"].to_numpy()).astype(np.float32), n_results=1,
                            include=["documents"])
            for want, got, doc, gdoc in zip(part["id"], res["ids"], part["document"], res["documents"]):
                if not got or (got[0] != want and gdoc[0] != doc):
                    failures.append(f"chunk {want} did not retrieve itself (got {got[0] if got else 'nothing'})")
    return {"count": count, "expected": model["count"], "failures": failures}


def open_check_in_subprocess(version_dir: Path, timeout: float = 600) -> dict:
    """:func:`open_check` in a separate Python process; a crash there is a failure here, not a crash."""
    proc = subprocess.run([sys.executable, "-m", "nova_pipeline.core.golden", "open-check", str(version_dir)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"count": -1, "expected": -1,
                "failures": [f"opening {version_dir} crashed the checker (exit {proc.returncode}): {' | '.join(tail)}"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class GoldenVersion:
    """A committed golden version."""

    name: str
    path: Path
    created_at: str
    count: int
    files: int
    bytes: int


def list_versions(home: Path) -> list[GoldenVersion]:
    """Committed versions (those with a manifest), oldest first."""
    root = golden_root(home)
    out = []
    if not root.exists():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(PARTIAL_PREFIX) or not (d / MANIFEST).exists():
            continue
        try:
            m = json.loads((d / MANIFEST).read_text())
        except ValueError:
            continue
        out.append(GoldenVersion(name=d.name, path=d, created_at=m["created_at"], count=m["count"],
                                 files=len(m["files"]), bytes=sum(f["size"] for f in m["files"].values())))
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
    raise GoldenCopyError(f"{golden_root(home) / CURRENT} points at {name!r}, which is not a committed version")


def referenced_store_keys(home: Path) -> set[str]:
    """Store keys that committed golden versions refer to (kept by the store's garbage collection)."""
    keys: set[str] = set()
    for v in list_versions(home):
        idx = v.path / "store_index.parquet"
        if idx.exists():
            keys.update(pd.read_parquet(idx, columns=["key"])["key"])
    return keys


def _new_version_name(root: Path) -> str:
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name, n = base, 1
    while (root / name).exists() or (root / f"{PARTIAL_PREFIX}{name}").exists():
        n += 1
        name = f"{base}-{n}"
    return name


def promote(
    home: Path, fingerprint: str, chroma_url: str | None = None, keep: int = DEFAULT_KEEP,
    checker: Callable[[Path], dict] = open_check_in_subprocess,
) -> GoldenVersion:
    """Snapshot the index into a new golden version, verify it, and make it CURRENT.

    Raises:
        GoldenCopyError: the snapshot failed verification; nothing is listed and CURRENT is unchanged.
    """
    from nova_pipeline.core.dictionary import DictionaryRegistry
    from nova_pipeline.core.store import ContentStore
    from nova_pipeline.core.tables import table_path

    home = Path(home)
    root = golden_root(home)
    root.mkdir(parents=True, exist_ok=True)
    _clean_partials(root)
    name = _new_version_name(root)
    stage = root / f"{PARTIAL_PREFIX}{name}"
    stage.mkdir()
    try:
        with writer_lock(home):
            client = open_client(home, chroma_url)
            collection = get_collection(client, fingerprint, create=False)
            count = collection.count()
            if not chroma_url:  # embedded: the data dir, quiesced by the writer lock
                shutil.copytree(home / "vectors", stage / "vectors")
            exported = export_collection(collection, stage / "export" / "vectors.parquet")
        if exported != count:
            raise GoldenCopyError(f"exported {exported} vectors but the collection counts {count}")
        (stage / "tables").mkdir()
        for t in TABLES:
            if table_path(home, t).exists():
                shutil.copy2(table_path(home, t), stage / "tables" / f"{t}.parquet")
        store = ContentStore(home)
        if store.index_path.exists():
            shutil.copy2(store.index_path, stage / "store_index.parquet")
        registry = DictionaryRegistry(home)
        (stage / "dictionaries").mkdir()
        for digest in store.dictionaries_in_use() if store.index_path.exists() else set():
            shutil.copy2(registry.path(digest), stage / "dictionaries" / registry.path(digest).name)
        atomic_write_bytes(stage / "model.json", json.dumps({
            "fingerprint": fingerprint, "collection": collection_name(fingerprint), "count": count,
            "mode": "server" if chroma_url else "embedded",
        }, indent=1).encode())
        result = checker(stage)
        if result["failures"]:
            raise GoldenCopyError(f"golden copy {name} failed verification: {'; '.join(result['failures'][:3])}")
        files = build_manifest(stage)
        manifest = {"version": name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "count": count, "fingerprint": fingerprint, "files": files}
        atomic_write_bytes(stage / MANIFEST, json.dumps(manifest, indent=1).encode())
        set_read_only(stage)
        os.rename(stage, root / name)
        fsync_dir(root)
    except BaseException:
        remove_tree(stage)
        raise
    atomic_write_bytes(root / CURRENT, (name + "\n").encode())
    apply_retention(home, keep)
    return next(v for v in list_versions(home) if v.name == name)


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


def _copy_out(version: GoldenVersion, dest: Path) -> None:
    """Copy a version's ``vectors/`` to ``dest`` (writable), replacing ``dest`` atomically by rename."""
    new = dest.with_name(dest.name + ".new")
    remove_tree(new)
    shutil.copytree(version.path / "vectors", new)
    make_writable(new)
    old = dest.with_name(dest.name + ".old")
    remove_tree(old)
    if dest.exists():
        os.rename(dest, old)
    os.rename(new, dest)
    fsync_dir(dest.parent)
    remove_tree(old)


def make_runtime_copy(home: Path) -> Path:
    """``NOVA_HOME/runtime/vectors``: a writable copy of CURRENT's vectors (embedded versions only).

    Raises:
        GoldenCopyError: there is no golden copy, or CURRENT has no embedded data dir.
    """
    cur = current_version(home)
    if cur is None:
        raise GoldenCopyError("no golden copy yet: run the rebuild job, whose last step promotes one")
    if not (cur.path / "vectors").is_dir():
        raise GoldenCopyError(f"golden version {cur.name} was exported from a server: it has no data dir to copy")
    dest = Path(home) / "runtime" / "vectors"
    dest.parent.mkdir(parents=True, exist_ok=True)
    _copy_out(cur, dest)
    return dest


def reset_index(home: Path, chroma_url: str | None, confirm: bool, who: str) -> dict:
    """Rebuild the primary index from CURRENT without re-embedding, and audit it.

    Embedded mode replaces ``NOVA_HOME/vectors`` with a copy of the golden data dir; server mode upserts the
    export into the server's collection and deletes anything else there.

    Raises:
        ConfirmationRequired: ``confirm`` is False.
        GoldenCopyError: there is no golden copy, or it fails verification.
    """
    if not confirm:
        audit.record(home, "reset_index", "refused: confirm is not true", who)
        raise ConfirmationRequired("resetting the index replaces it from the golden copy: pass confirm: true "
                                   "(nova golden reset --yes)")
    cur = current_version(home)
    if cur is None:
        audit.record(home, "reset_index", "failed: no golden copy", who)
        raise GoldenCopyError("no golden copy yet: run the rebuild job, whose last step promotes one")
    failures = verify_tree(cur.path)
    if failures:
        audit.record(home, "reset_index", "failed: golden copy does not verify", who, version=cur.name,
                     failures=failures[:5])
        raise GoldenCopyError(f"golden version {cur.name} does not verify: {'; '.join(failures[:3])}")
    model = json.loads((cur.path / "model.json").read_text())
    _forget_cached_clients()
    with writer_lock(home):
        if chroma_url:
            col = get_collection(open_client(home, chroma_url), model["fingerprint"])
            upserted, deleted = import_export(col, cur.path / "export" / "vectors.parquet")
            details = {"mode": "server", "upserted": upserted, "deleted": deleted}
        elif (cur.path / "vectors").is_dir():
            _copy_out(cur, Path(home) / "vectors")
            details = {"mode": "embedded", "copied": str(cur.path / "vectors")}
        else:
            col = get_collection(open_client(home), model["fingerprint"])
            upserted, deleted = import_export(col, cur.path / "export" / "vectors.parquet")
            details = {"mode": "embedded from export", "upserted": upserted, "deleted": deleted}
    _forget_cached_clients()
    count = get_collection(open_client(home, chroma_url), model["fingerprint"], create=False).count()
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

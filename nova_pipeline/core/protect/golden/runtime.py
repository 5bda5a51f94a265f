"""The runtime copy and reset: a golden version applied to a writable Chroma store, as a diff.

Nothing writes into a golden version again: resets and the runtime copy (``NOVA_HOME/runtime/vectors``, the
local stand-in for a dead primary) apply its export to a Chroma store as a diff (upsert what is missing,
delete what is extra), so a reset after a small change costs little, and a lost store rebuilds without
re-embedding.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nova_pipeline.core.atomic import atomic_write_bytes, fsync_dir
from nova_pipeline.core.errors import ConfirmationRequired, GoldenCopyError
from nova_pipeline.core.index import run_view
from nova_pipeline.core.index.vector_store import CHROMA_DB, fresh_client, get_collection
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.locks import writer_lock
from nova_pipeline.core.protect import audit
from nova_pipeline.core.protect.golden.export import import_export, restore_lexical
from nova_pipeline.core.protect.golden.verify import verify_tree
from nova_pipeline.core.protect.golden.versions import (
    LEXICAL_DIR,
    MANIFEST,
    GoldenVersion,
    current_version,
    golden_root,
    remove_tree,
)

__all__ = [
    "Applied",
    "forget_cached_clients",
    "make_runtime_copy",
    "reset_index",
    "runtime_dir",
    "runtime_version",
]

log = logging.getLogger(__name__)


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
    seeded: bool = False  # started as a file copy of another data dir (see make_runtime_copy's seed)


def _require_current(home: Path) -> GoldenVersion:
    cur = current_version(home)
    if cur is None:
        raise GoldenCopyError("no golden copy yet: run the rebuild job, whose last step promotes one")
    return cur


def _apply_to_data_dir(version: GoldenVersion, dest: Path, home: Path, held: Path | None = None) -> Applied:
    """Make the embedded store at ``dest`` hold exactly ``version``: a diff when it opens (by export shard
    against ``held``, the version it is known to hold, when given), else a fresh store built beside it and
    swapped in by rename."""
    started = time.perf_counter()
    model = json.loads((version.path / "model.json").read_text())
    rebuilt = False
    try:
        with fresh_client(home, path=dest) as client:
            col = get_collection(client, model["fingerprint"])
            upserted, deleted = import_export(col, version.path, held=held)
            count = col.count()
    except Exception as exc:  # noqa: BLE001 - a damaged data dir raises anything; rebuild it from the export
        log.warning(
            "the Chroma store at %s cannot be updated (%s): rebuilding it from %s", dest, exc, version.name
        )
        rebuilt = True
        run_view.forget(dest)  # a kept view of it would read the files swapped out below
        new = dest.with_name(dest.name + ".new")
        remove_tree(new)
        with fresh_client(home, path=new) as client:  # closed before the directories are swapped
            col = get_collection(client, model["fingerprint"])
            upserted, deleted = import_export(col, version.path)
            count = col.count()
        old = dest.with_name(dest.name + ".old")
        remove_tree(old)
        if dest.exists():
            os.rename(dest, old)
        os.rename(new, dest)
        fsync_dir(dest.parent)
        remove_tree(old)
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


def make_runtime_copy(home: Path, force: bool = False, seed: Path | None = None) -> Applied:
    """Bring ``NOVA_HOME/runtime/vectors``, a writable embedded Chroma store, to the CURRENT version.

    In both modes (it is the local stand-in for a dead server). After a small change it costs a small
    diff; when ``runtime/version.json`` already names CURRENT it costs nothing, unless ``force`` (whoever
    writes into the runtime copy, e.g. while failed over, removes that record first). The copy is written
    under the writer lock (:mod:`nova_pipeline.core.locks`), like every other write to a vector store.

    ``seed``: a healthy embedded data dir that holds about this version (the primary's, just exported to
    it). When there is no copy yet, the copy starts as a file copy of ``seed`` (its other collections
    dropped), and the usual diff against the whole version (listing the collection) then makes it hold
    exactly the version, whatever was written to ``seed`` since. Upserting every vector instead rebuilds
    Chroma's HNSW graph a second time: 621 s of a 2,242 s cold build at 10,000 files (bench_scale). Ids
    are derived from content, so an id present on both sides is the same vector.

    Raises:
        GoldenCopyError: there is no golden copy, or the store does not hold the version's count after.
        LockTimeoutError: another writer held the writer lock too long.
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
    with writer_lock(home):
        held = runtime_version(home)  # again, under the lock: what the copy holds, unless written since
        held_dir = golden_root(home) / str(held.get("version")) if held and not force else None
        if held_dir is not None and not (held_dir / MANIFEST).exists() or not dest.is_dir():
            held_dir = None  # removed by retention, or no copy: list the collection
        dest.parent.mkdir(parents=True, exist_ok=True)
        Layout.of(home).runtime_version.unlink(missing_ok=True)
        seeded = seed is not None and not dest.is_dir() and _seed(home, cur, Path(seed), dest)
        applied = _apply_to_data_dir(cur, dest, home, held_dir)
        applied.seeded = seeded
        atomic_write_bytes(
            Layout.of(home).runtime_version,
            json.dumps({"version": cur.name, "created_at": cur.created_at, "count": applied.count}).encode(),
        )
    return applied


def _seed(home: Path, version: GoldenVersion, seed: Path, dest: Path) -> bool:
    """Make ``dest`` a file copy of the data dir ``seed`` that holds only ``version``'s collection (copied
    beside, then renamed: a crash leaves no half copy at ``dest``); False, logged, when ``seed`` is no Chroma
    data dir or cannot be copied (the copy is then built by upserts)."""
    if not (seed / CHROMA_DB).is_file():
        return False
    new = dest.with_name(dest.name + ".new")
    remove_tree(new)
    run_view.forget(
        seed
    )  # a view kept open by this run's earlier steps is closed before its files are copied
    try:
        shutil.copytree(seed, new)
        keep = json.loads((version.path / "model.json").read_text())["collection"]
        with fresh_client(home, path=new) as client:
            for c in client.list_collections():  # Chroma 1.x: Collection objects
                if c.name != keep:
                    client.delete_collection(c.name)
    except Exception as exc:  # noqa: BLE001 - a copy that fails for any reason is built the usual way
        log.warning("the runtime copy is built by upserts: %s could not be copied (%s)", seed, exc)
        remove_tree(new)
        return False
    os.rename(new, dest)
    fsync_dir(dest.parent)
    return True


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
            with fresh_client(home, chroma_url) as client:
                col = get_collection(client, model["fingerprint"])
                upserted, deleted = import_export(col, cur.path)
                count = col.count()
            details = {"mode": "server", "upserted": upserted, "deleted": deleted}
        else:
            applied = _apply_to_data_dir(cur, Layout.of(home).vectors, home)
            count = applied.count
            details = {
                "mode": "embedded (rebuilt)" if applied.rebuilt else "embedded",
                "upserted": applied.upserted,
                "deleted": applied.deleted,
            }
    lex = restore_lexical(home, cur.path)
    how = "installed" if (cur.path / LEXICAL_DIR).exists() else "rebuilt from the export"
    details["lexical"] = f"{lex.docs} documents, {how}"
    details["code_graph"] = _restore_graph_tables(home, cur.path)
    outcome = "ok" if count == model["count"] else f"count {count} != {model['count']}"
    return audit.record(home, "reset_index", outcome, who, version=cur.name, count=count, **details)


def _restore_graph_tables(home: Path, version_dir: Path) -> str:
    """Put the golden version's code graph tables in place (verified with the version); what was done."""
    from nova_pipeline.core.atomic import atomic_write_bytes
    from nova_pipeline.core.tables import CODE_NAMES, CODE_RELATIONS, CODE_SYMBOLS, table_path

    names = (CODE_SYMBOLS, CODE_RELATIONS, CODE_NAMES)
    if not all((version_dir / "tables" / f"{t}.parquet").is_file() for t in names):
        return "not in this golden version"
    for t in names:
        atomic_write_bytes(table_path(home, t), (version_dir / "tables" / f"{t}.parquet").read_bytes())
    return "installed"


def forget_cached_clients() -> None:
    """Forget every Chroma system this process cached (one per data dir): a test that deletes a data dir
    under a client it opened calls this. The pipeline's writers open fresh clients instead
    (:func:`~nova_pipeline.core.index.vector_store.fresh_client`) and never need it."""
    with contextlib.suppress(Exception):
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()

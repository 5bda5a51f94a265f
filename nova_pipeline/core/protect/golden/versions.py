r"""Golden versions on disk: their names, listing, the ``CURRENT`` pointer and retention.

A version lives in ``NOVA_HOME/golden/<version>/`` (the layout is in :mod:`.promotion`); ``MANIFEST.json``,
written last, is its commit marker, so a version without one is never listed. Versions are read-only and
share unchanged files by hard link: deleting one unlinks its names only (:func:`remove_tree` never
``chmod``\ s a file, since the inode is shared). Names are UTC stamps from :func:`new_stamp`, which backups
reuse for their own names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nova_pipeline.core.compression.store import ContentStore
from nova_pipeline.core.errors import GoldenCopyError
from nova_pipeline.core.layout import Layout

__all__ = [
    "CURRENT",
    "DEFAULT_KEEP",
    "LEXICAL_DELTA",
    "LEXICAL_DIR",
    "MANIFEST",
    "PARTIAL_PREFIX",
    "PIN_PREFIX",
    "STAMP_RE",
    "STORE_INDEX",
    "VERIFIED",
    "GoldenVersion",
    "apply_retention",
    "clean_partials",
    "current_version",
    "golden_root",
    "list_versions",
    "new_stamp",
    "new_version_name",
    "pin_name",
    "pin_version",
    "read_manifest",
    "remove_tree",
    "set_read_only",
    "stamp_key",
    "sync_pins",
]

log = logging.getLogger(__name__)


CURRENT = "CURRENT"

MANIFEST = "MANIFEST.json"

PARTIAL_PREFIX = ".partial-"

DEFAULT_KEEP = 3

LEXICAL_DIR = "lexical"
LEXICAL_DELTA = "lexical_delta.json"  # the live delta against lexical/, when the index had one
# what verify_export found of each export file ({file: {blake3, rows, dim, max_norm}}), written after the
# check and before MANIFEST.json (which covers it): the next promotion does not read a linked file's vectors
VERIFIED = "verified.json"


def golden_root(home: Path | Layout) -> Path:
    return Layout.of(home).golden


def read_manifest(version_dir: Path) -> dict:
    """The parsed ``MANIFEST.json`` of a version.

    Raises:
        GoldenCopyError: it is missing or unreadable.
    """
    try:
        return json.loads((Path(version_dir) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise GoldenCopyError(f"{Path(version_dir) / MANIFEST} is unreadable: {exc}") from exc


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


STORE_INDEX = "store_index.parquet"
PIN_PREFIX = "golden-"


def pin_name(version: str) -> str:
    """The name of the store pin of golden version ``version``."""
    return f"{PIN_PREFIX}{version}"


def pin_version(home: Path, version_dir: Path) -> None:
    """Pin, in the store, the objects and dictionaries that the version at ``version_dir`` refers to (its
    ``store_index.parquet``; a version without one pins nothing)."""
    idx = Path(version_dir) / STORE_INDEX
    if idx.exists():
        ContentStore(home).pin(
            pin_name(Path(version_dir).name.removeprefix(PARTIAL_PREFIX)),
            pd.read_parquet(idx, columns=["key", "dict_blake3"]),
        )


def sync_pins(home: Path) -> dict[str, int]:
    """Make the store's golden pins match the committed versions: pin every version that has no pin (a home
    from before pins, a restored version), unpin every pin whose version is gone (a crash between pinning
    and committing, or between removing a version and unpinning it).

    Returns:
        ``{"pinned": n, "unpinned": m}``.
    """
    store = ContentStore(home)
    store.pins_dir.mkdir(parents=True, exist_ok=True)
    have = {n for n in store.pins() if n.startswith(PIN_PREFIX)}
    versions = {pin_name(v.name): v for v in list_versions(home)}
    for name in sorted(set(versions) - have):
        pin_version(home, versions[name].path)
    for name in sorted(have - set(versions)):
        store.unpin(name)
    return {"pinned": len(set(versions) - have), "unpinned": len(have - set(versions))}


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


def new_version_name(root: Path) -> str:
    return new_stamp(p.name.removeprefix(PARTIAL_PREFIX) for p in root.iterdir())


def clean_partials(root: Path) -> None:
    for d in root.glob(f"{PARTIAL_PREFIX}*"):
        log.warning("removing %s, left by an interrupted promotion", d)
        remove_tree(d)


def apply_retention(home: Path, keep: int) -> list[str]:
    """Delete the oldest versions beyond ``keep``, never CURRENT, then unpin their store objects (in that
    order: a crash between the two leaves a pin too many, never a version without its objects). Returns the
    names removed."""
    cur = current_version(home)
    versions = list_versions(home)
    removed = []
    store = ContentStore(home)
    for v in versions[: max(0, len(versions) - keep)]:
        if cur is not None and v.name == cur.name:
            continue
        remove_tree(v.path)
        store.unpin(pin_name(v.name))
        removed.append(v.name)
    return removed

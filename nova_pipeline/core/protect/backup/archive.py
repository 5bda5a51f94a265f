"""Backups of the golden copy and the store: ``NOVA_HOME/backups/backup_<UTC>.tar.zst``, and retention.

An archive holds the CURRENT golden version (``golden/<version>/...``), the store objects and dictionaries
it refers to (``store/objects/..``, in the golden version's ``dictionaries/``), a ``pg_dump -Fc`` of the
Dagster database when the instance is on PostgreSQL (``dagster.pgdump``), and last ``BACKUP_MANIFEST.json``
with the blake3 and size of every member. Beside it, ``backup_<UTC>.tar.zst.blake3`` holds the blake3 of the
archive file.

Publishing: the archive is written under a temp name and fsynced; the checksum file is written (atomically);
then the archive is renamed into place and the directory fsynced. Only ``backup_*.tar.zst`` names are
listed, so a crash at any step leaves nothing partial listed. Retention keeps the last 7 verified backups
(seed 002).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pandas as pd
import zstandard as zstd

from nova_pipeline.core.atomic import TMP_PREFIX, atomic_write_bytes, fsync_dir
from nova_pipeline.core.errors import BackupError, BackupNotFoundError, BackupVerifyError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.protect.golden.verify import verify_tree
from nova_pipeline.core.protect.golden.versions import (
    current_version,
    golden_root,
    new_stamp,
    stamp_key,
)

__all__ = [
    "ARCHIVE",
    "BACKUP_MANIFEST",
    "DEFAULT_KEEP",
    "DEFAULT_LEVEL",
    "DEFAULT_THREADS",
    "NAME_RE",
    "PG_DUMP",
    "BackupInfo",
    "BackupResult",
    "apply_retention",
    "backups_dir",
    "create_backup",
    "find_backup",
    "list_backups",
    "mark_verified",
    "newest_backup",
    "open_archive",
    "read_backup_manifest",
]

log = logging.getLogger(__name__)

ARCHIVE = Layout(Path())  # an archive mirrors NOVA_HOME: golden/<version>/..., store/objects/..

BACKUP_MANIFEST = "BACKUP_MANIFEST.json"

PG_DUMP = "dagster.pgdump"

NAME_RE = re.compile(r"^backup_(\d{8}T\d{6}Z(?:-\d+)?)\.tar\.zst$")

DEFAULT_KEEP = 7  # verified backups kept (seed 002: "keep last 7 backups")

DEFAULT_LEVEL = 3  # zstd level of the archive

DEFAULT_THREADS = -1  # zstd threads: every core


def backups_dir(home: Path | Layout) -> Path:
    return Layout.of(home).backups


@dataclass
class BackupInfo:
    """A published backup. ``id`` is the UTC timestamp part of the name."""

    id: str
    path: Path
    size: int

    @property
    def checksum_path(self) -> Path:
        return self.path.with_name(self.path.name + ".blake3")

    @property
    def verified_path(self) -> Path:
        """Sidecar written when the backup passes verification: ``{"level": n, "at": ...}``."""
        return self.path.with_name(self.path.name + ".verified")

    def verified_level(self) -> int:
        """Highest verification level recorded for this backup (0: never verified)."""
        try:
            return int(json.loads(self.verified_path.read_text())["level"])
        except (FileNotFoundError, ValueError, KeyError):
            return 0


def mark_verified(b: BackupInfo, level: int, golden_version: str | None = None) -> None:
    try:
        record = json.loads(b.verified_path.read_text())
    except (FileNotFoundError, ValueError):
        record = {"level": 0}
    if level > record.get("level", 0) or golden_version:
        record["level"] = max(level, record.get("level", 0))
        record["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if golden_version:
            record["golden_version"] = golden_version
        atomic_write_bytes(b.verified_path, json.dumps(record).encode())


def list_backups(home: Path) -> list[BackupInfo]:
    """Published backups, newest first."""
    d = backups_dir(home)
    if not d.exists():
        return []
    out = []
    for p in d.iterdir():
        m = NAME_RE.match(p.name)
        if m and p.is_file():
            out.append(BackupInfo(id=m.group(1), path=p, size=p.stat().st_size))
    return sorted(out, key=lambda b: stamp_key(b.id), reverse=True)


def newest_backup(home: Path) -> BackupInfo | None:
    """The newest published backup, or None."""
    found = list_backups(home)
    return found[0] if found else None


def find_backup(home: Path, backup_id: str) -> BackupInfo:
    """A backup by id (or by file name).

    Raises:
        BackupNotFoundError: no such backup.
    """
    for b in list_backups(home):
        if backup_id in (b.id, b.path.name):
            return b
    raise BackupNotFoundError(
        f"no backup {backup_id!r} under {backups_dir(home)}; `nova backup list` shows them"
    )


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through it."""

    def __init__(self, fh):
        self.fh = fh
        self.hash = blake3.blake3()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.hash.update(b)
        return self.fh.write(b)


class _Passthrough(io.RawIOBase):
    """Raw adapter so io.BufferedWriter can batch tarfile's small writes into the zstd stream."""

    def __init__(self, fh):
        self.fh = fh

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.fh.write(b)
        return len(b)

    def close(self) -> None:  # the zstd writer is closed by its own context manager
        super().close()


@dataclass
class BackupResult:
    """What :func:`create_backup` wrote. Seconds are wall-clock."""

    info: BackupInfo
    golden_version: str
    members: int
    bytes: int
    seconds: float
    removed: list[str] = field(default_factory=list)
    pg_dump: str = "not configured"


def _members(home: Path) -> tuple[str, list[tuple[str, Path]]]:
    """(golden version name, [(archive name, file)]) of what goes into a backup."""
    cur = current_version(home)
    if cur is None:
        raise BackupError("no golden copy to back up: run the rebuild job, whose last step promotes one")
    failures = verify_tree(cur.path)
    if failures:
        raise BackupError(f"golden version {cur.name} does not verify, not backing it up: {failures[0]}")
    members = [
        ((ARCHIVE.golden / cur.name / p.relative_to(cur.path)).as_posix(), p)
        for p in sorted(cur.path.rglob("*"))
        if p.is_file()
    ]
    idx = cur.path / "store_index.parquet"
    if idx.exists():
        from nova_pipeline.core.compression.store import ContentStore

        store = ContentStore(home)
        for key in sorted(pd.read_parquet(idx, columns=["key"])["key"]):
            path = Path(store.object_path(key))
            if not path.exists():
                raise BackupError(
                    f"store object {key} ({path}) that golden version {cur.name} needs is missing"
                )
            members.append(((ARCHIVE.store_objects / key[:2] / key[2:]).as_posix(), path))
    return cur.name, members


def create_backup(
    home: Path,
    pg_url: str | None = None,
    level: int = DEFAULT_LEVEL,
    threads: int = DEFAULT_THREADS,
    keep: int = DEFAULT_KEEP,
) -> BackupResult:
    """Archive the CURRENT golden version and its store objects (and the Dagster database); apply retention.

    Args:
        pg_url: ``postgresql://…`` of the Dagster instance database, to include a ``pg_dump -Fc``; None when
            the instance does not use PostgreSQL.
        level: zstd level of the archive; ``threads``: zstd worker threads (-1: every core).

    The manifest and the result record ``pg_dump``: ``included``, ``not configured`` (no ``pg_url``), or
    ``failed: <pg_dump's error>`` (the backup of the index and store still goes ahead, and says so).

    Raises:
        BackupError: nothing to back up, a member is missing, or a write failed; no partial backup is left
            listed.
    """
    started = time.perf_counter()
    home = Path(home)
    d = backups_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(f"{TMP_PREFIX}*"):
        stale.unlink()
    version, members = _members(home)
    bid = new_stamp(b.id for b in list_backups(home))
    final = d / f"backup_{bid}.tar.zst"
    tmp = d / f"{TMP_PREFIX}{final.name}"
    with tempfile.TemporaryDirectory(prefix="nova-backup-") as scratch:
        pg_dump = "not configured"
        if pg_url:
            dump = Path(scratch) / PG_DUMP
            try:
                proc = subprocess.run(
                    ["pg_dump", "-Fc", "-f", str(dump), pg_url], capture_output=True, text=True
                )
                error = proc.stderr.strip() if proc.returncode != 0 else ""
            except OSError as exc:  # no pg_dump on this machine
                error = str(exc)
            if error:
                pg_dump = f"failed: {error[:500]}"
                log.error("pg_dump of the Dagster database failed, backing up without it: %s", error)
            else:
                pg_dump = "included"
                members.append((PG_DUMP, dump))
        manifest: dict[str, dict] = {}
        total = 0
        try:
            with open(tmp, "wb") as raw:
                hashing = _HashingWriter(raw)
                cctx = zstd.ZstdCompressor(level=level, threads=threads)
                with (
                    cctx.stream_writer(hashing, closefd=False) as zfh,
                    io.BufferedWriter(_Passthrough(zfh), buffer_size=1 << 20) as buffered,
                    tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as tar,
                ):
                    for name, path in members:
                        data = path.read_bytes()
                        manifest[name] = {"blake3": blake3.blake3(data).hexdigest(), "size": len(data)}
                        total += len(data)
                        _add_bytes(tar, name, data)
                    body = json.dumps(
                        {
                            "id": bid,
                            "golden_version": version,
                            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "pg_dump": pg_dump,
                            "members": manifest,
                        },
                        indent=1,
                    ).encode()
                    _add_bytes(tar, BACKUP_MANIFEST, body)  # last: the commit marker inside the archive
                raw.flush()
                os.fsync(raw.fileno())
            digest = hashing.hash.hexdigest()
            atomic_write_bytes(d / f"{final.name}.blake3", f"{digest}  {final.name}\n".encode())
            os.replace(tmp, final)
            fsync_dir(d)
            # level 1 holds by construction: the checksum is of the bytes just written, the manifest is in
            mark_verified(BackupInfo(id=bid, path=final, size=0), 1, version)
        except BaseException as exc:
            if tmp.exists():
                tmp.unlink()
            if not final.exists():
                (d / f"{final.name}.blake3").unlink(missing_ok=True)
                (d / f"{final.name}.verified").unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise BackupError(f"writing backup {final} failed: {exc}; nothing was published") from exc
            raise
    info = BackupInfo(id=bid, path=final, size=final.stat().st_size)
    removed = apply_retention(home, keep)
    return BackupResult(
        info=info,
        golden_version=version,
        members=len(members),
        bytes=total,
        seconds=time.perf_counter() - started,
        removed=removed,
        pg_dump=pg_dump,
    )


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    ti.mtime = int(time.time())
    tar.addfile(ti, io.BytesIO(data))


def apply_retention(home: Path, keep: int = DEFAULT_KEEP) -> list[str]:
    """Keep the newest ``keep`` verified backups (per their ``.verified`` record); delete older ones.

    Never deleted: the newest verified backup, the newest verified backup of each golden version still on
    disk, and backups newer than the newest verified one (they may be under inspection).
    Returns the ids removed.
    """
    backups = list_backups(home)  # newest first
    verified = [b for b in backups if b.verified_level() >= 1]
    if not verified:
        return []
    keep_ids = {b.id for b in verified[: max(1, keep)]}
    on_disk = {p.name for p in golden_root(home).iterdir()} if golden_root(home).exists() else set()
    versions_kept: set[str] = set()
    for b in verified:
        v = _golden_version_of(b)
        if v in on_disk and v not in versions_kept:
            keep_ids.add(b.id)
            versions_kept.add(v)
    newest_verified = verified[0].id
    removed = []
    for b in backups:
        if b.id in keep_ids or stamp_key(b.id) > stamp_key(newest_verified):
            continue
        b.path.unlink()
        b.checksum_path.unlink(missing_ok=True)
        b.verified_path.unlink(missing_ok=True)
        removed.append(b.id)
    return removed


def _golden_version_of(b: BackupInfo) -> str | None:
    try:
        return json.loads(b.verified_path.read_text())["golden_version"]
    except (FileNotFoundError, ValueError, KeyError):
        pass
    try:
        return read_backup_manifest(b)["golden_version"]
    except BackupVerifyError:
        return None


def open_archive(path: Path):
    dctx = zstd.ZstdDecompressor()
    fh = open(path, "rb")
    reader = dctx.stream_reader(fh, closefd=True)
    return tarfile.open(fileobj=reader, mode="r|")


def read_backup_manifest(b: BackupInfo) -> dict:
    """The archive's manifest (the last member), read by streaming the archive.

    Raises:
        BackupVerifyError: the archive is unreadable or has no manifest.
    """
    try:
        with open_archive(b.path) as tar:
            manifest = None
            for ti in tar:
                if ti.name == BACKUP_MANIFEST:
                    manifest = json.loads(tar.extractfile(ti).read())
    except (tarfile.TarError, zstd.ZstdError, OSError, EOFError, ValueError) as exc:
        raise BackupVerifyError(f"backup {b.path.name} is unreadable: {exc}") from exc
    if manifest is None:
        raise BackupVerifyError(f"backup {b.path.name} has no {BACKUP_MANIFEST}: it is incomplete")
    return manifest

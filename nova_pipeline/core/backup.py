"""Verified backups of the golden copy and the store: ``NOVA_HOME/backups/backup_<UTC>.tar.zst``.

An archive holds the CURRENT golden version (``golden/<version>/...``), the store objects and dictionaries
it refers to (``store/objects/..``, in the golden version's ``dictionaries/``), a ``pg_dump -Fc`` of the
Dagster database when the instance is on PostgreSQL (``dagster.pgdump``), and last ``BACKUP_MANIFEST.json``
with the blake3 and size of every member. Beside it, ``backup_<UTC>.tar.zst.blake3`` holds the blake3 of the
archive file.

Publishing: the archive is written under a temp name and fsynced; the checksum file is written (atomically);
then the archive is renamed into place and the directory fsynced. Only ``backup_*.tar.zst`` names are
listed, so a crash at any step leaves nothing partial listed.

Verification levels (restic's ``check`` / ``check --read-data`` / restore are the model):
1. structure: the checksum file matches the archive, and the manifest is present;
2. full read: every member's blake3 matches the manifest, nothing is missing or extra;
3. restore drill: restore into a temp dir, open Chroma in a subprocess (count and self-retrieval),
   blake3-verify every store object, and ``pg_restore`` a dump into a scratch database.

Extraction refuses absolute paths, ``..``, links and devices (tarfile's ``data`` filter plus our own check).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pandas as pd
import zstandard as zstd

from nova_pipeline.core import audit
from nova_pipeline.core.atomic import TMP_PREFIX, atomic_write_bytes, fsync_dir
from nova_pipeline.core.errors import BackupError, BackupVerifyError, ConfirmationRequired
from nova_pipeline.core.golden import (
    CURRENT,
    MANIFEST,
    current_version,
    golden_root,
    new_stamp,
    open_check_in_subprocess,
    remove_tree,
    reset_index,
    stamp_key,
    verify_tree,
)
from nova_pipeline.core.layout import Layout

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


def _mark_verified(b: BackupInfo, level: int, golden_version: str | None = None) -> None:
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
        BackupError: no such backup.
    """
    for b in list_backups(home):
        if backup_id in (b.id, b.path.name):
            return b
    raise BackupError(f"no backup {backup_id!r} under {backups_dir(home)}; `nova backup list` shows them")


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
    members = [((ARCHIVE.golden / cur.name / p.relative_to(cur.path)).as_posix(), p)
               for p in sorted(cur.path.rglob("*")) if p.is_file()]
    idx = cur.path / "store_index.parquet"
    if idx.exists():
        from nova_pipeline.core.store import ContentStore

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
            _mark_verified(BackupInfo(id=bid, path=final, size=0), 1, version)
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
        return _read_manifest(b)["golden_version"]
    except BackupVerifyError:
        return None


def _open_tar(path: Path):
    dctx = zstd.ZstdDecompressor()
    fh = open(path, "rb")
    reader = dctx.stream_reader(fh, closefd=True)
    return tarfile.open(fileobj=reader, mode="r|")


def _read_manifest(b: BackupInfo) -> dict:
    """The archive's manifest (the last member), read by streaming the archive.

    Raises:
        BackupVerifyError: the archive is unreadable or has no manifest.
    """
    try:
        with _open_tar(b.path) as tar:
            manifest = None
            for ti in tar:
                if ti.name == BACKUP_MANIFEST:
                    manifest = json.loads(tar.extractfile(ti).read())
    except (tarfile.TarError, zstd.ZstdError, OSError, EOFError, ValueError) as exc:
        raise BackupVerifyError(f"backup {b.path.name} is unreadable: {exc}") from exc
    if manifest is None:
        raise BackupVerifyError(f"backup {b.path.name} has no {BACKUP_MANIFEST}: it is incomplete")
    return manifest


def verify_structure(b: BackupInfo, read_manifest: bool = True) -> list[str]:
    """Level 1: the checksum file matches the archive, and (unless ``read_manifest`` is False) the archive
    has its manifest."""
    failures = []
    try:
        want = b.checksum_path.read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return [f"checksum file {b.checksum_path.name} is missing"]
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(b.path, "rb") as fh:
        while block := fh.read(4 * 2**20):
            h.update(block)
    if h.hexdigest() != want:
        failures.append(f"archive {b.path.name} does not match its checksum file (corrupt or truncated)")
    if read_manifest:
        try:
            _read_manifest(b)
        except BackupVerifyError as exc:
            failures.append(str(exc))
    return failures


def verify_full(b: BackupInfo) -> list[str]:
    """Level 2: the checksum, then every member read once and checked against the manifest (the last
    member)."""
    return _full_read(b)[1]


def _full_read(b: BackupInfo) -> tuple[dict | None, list[str]]:
    """One pass over the archive: ``(manifest, failures)``, the manifest being None when it is missing."""
    failures = verify_structure(b, read_manifest=False)
    hashes: dict[str, str] = {}
    manifest = None
    try:
        with _open_tar(b.path) as tar:
            for ti in tar:
                if ti.name == BACKUP_MANIFEST:
                    manifest = json.loads(tar.extractfile(ti).read())
                    continue
                problem = unsafe_member(ti)
                if problem:
                    failures.append(problem)
                    continue
                hashes[ti.name] = blake3.blake3(
                    tar.extractfile(ti).read() if ti.isfile() else b""
                ).hexdigest()
    except (tarfile.TarError, zstd.ZstdError, OSError, EOFError, ValueError) as exc:
        failures.append(f"archive {b.path.name} is unreadable: {exc}")
    if manifest is None:
        return None, failures + [f"backup {b.path.name} has no {BACKUP_MANIFEST}: it is incomplete"]
    members = manifest["members"]
    for name, digest in hashes.items():
        want = members.get(name)
        if want is None:
            failures.append(f"member {name} is not in the manifest")
        elif digest != want["blake3"]:
            failures.append(f"member {name} does not match its blake3 in the manifest")
    for name in sorted(set(members) - set(hashes)):
        failures.append(f"member {name} is missing from the archive")
    return manifest, failures


def unsafe_member(ti: tarfile.TarInfo) -> str | None:
    """Why a member must not be extracted (absolute path, ``..``, link, device), or None."""
    name = ti.name
    if name.startswith("/") or os.path.isabs(name):
        return f"member {name} has an absolute path: refused"
    if ".." in Path(name).parts:
        return f"member {name} climbs out with '..': refused"
    if ti.issym() or ti.islnk():
        return f"member {name} is a link: refused"
    if ti.isdev() or ti.isfifo() or ti.ischr() or ti.isblk():
        return f"member {name} is a device or fifo: refused"
    if not (ti.isfile() or ti.isdir()):
        return f"member {name} is not a regular file: refused"
    return None


def extract(b: BackupInfo, dest: Path) -> dict:
    """Safely extract a backup into ``dest`` after a full-read verification; returns its manifest.

    Raises:
        BackupVerifyError: the archive fails verification or holds an unsafe member (named).
    """
    manifest, failures = _full_read(b)
    if failures:
        raise BackupVerifyError(f"backup {b.id} failed verification: {'; '.join(failures[:3])}")
    dest.mkdir(parents=True, exist_ok=True)
    with _open_tar(b.path) as tar:
        for ti in tar:
            problem = unsafe_member(ti)
            if problem:
                raise BackupVerifyError(problem)
            tar.extract(ti, dest, filter="data")
    return manifest


def restore_drill(home: Path, b: BackupInfo, pg_admin_url: str | None = None) -> list[str]:
    """Level 3: restore into a temp dir and prove it works; one message per failure."""
    from nova_pipeline.core.store import ContentStore

    with tempfile.TemporaryDirectory(prefix="nova-drill-") as tmp:
        root = Path(tmp)
        try:
            manifest = extract(b, root)
        except BackupVerifyError as exc:
            return [str(exc)]
        failures = []
        version_dir = Layout(root).golden / manifest["golden_version"]
        failures += verify_tree(version_dir)
        result = open_check_in_subprocess(version_dir)
        failures += result["failures"]
        # store objects: decompress with the archived dictionaries and check every key
        drill = Layout(root / "drill_home")
        drill.dictionaries.mkdir(parents=True)
        for z in (version_dir / "dictionaries").glob("*.zdict"):
            shutil.copy2(z, drill.dictionaries / z.name)
        if Layout(root).store.exists():
            shutil.move(str(Layout(root).store), str(drill.store))
        store = ContentStore(drill.home)
        idx = version_dir / "store_index.parquet"
        if idx.exists():
            keys = pd.read_parquet(idx, columns=["key"])["key"].tolist()
            failures += store.verify(keys)
        if manifest.get("pg_dump") in (True, "included"):  # True: archives written before the status
            failures += _pg_restore_drill(root / PG_DUMP, pg_admin_url)
        return failures


def _pg_restore_drill(dump: Path, admin_url: str | None) -> list[str]:
    """Restore a dump into a scratch database, count its runs, drop it."""
    if not admin_url:
        return [f"{PG_DUMP} is present but no PostgreSQL server was given for the restore drill"]
    import psycopg2

    scratch = f"nova_drill_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{scratch}"')
        target = (
            re.sub(r"/[^/?]*(\?|$)", f"/{scratch}\\1", admin_url, count=1)
            if "/" in admin_url.split("@")[-1]
            else f"{admin_url}/{scratch}"
        )
        proc = subprocess.run(
            ["pg_restore", "--no-owner", "-d", target, str(dump)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return [f"pg_restore of {PG_DUMP} failed: {proc.stderr.strip()[:300]}"]
        check = psycopg2.connect(target)
        try:
            with check.cursor() as cur:
                cur.execute("SELECT count(*) FROM runs")
                cur.fetchone()
        finally:
            check.close()
        return []
    except psycopg2.Error as exc:
        return [f"restore drill of {PG_DUMP} failed: {exc}"]
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        conn.close()


def verify(home: Path, backup_id: str, level: int = 2, pg_admin_url: str | None = None) -> list[str]:
    """Verify a backup at ``level`` 1, 2 or 3 (see the module docstring); returns the failures."""
    b = find_backup(home, backup_id)
    if level <= 1:
        failures = verify_structure(b)
    elif level == 2:
        failures = verify_full(b)
    else:
        failures = restore_drill(home, b, pg_admin_url)
    if not failures:
        _mark_verified(b, min(max(level, 1), 3))
    elif b.verified_path.exists():
        b.verified_path.unlink()  # it failed now: it no longer counts as verified
    return failures


def restore(home: Path, backup_id: str, confirm: bool, who: str, chroma_url: str | None = None) -> dict:
    """Restore a backup: extract to a new location, verify there, then switch atomically; audited.

    The golden version comes back under ``golden/`` and becomes CURRENT, missing store objects and
    dictionaries are put back, and the primary index is rebuilt from the restored golden copy.

    Raises:
        ConfirmationRequired: ``confirm`` is False.
        BackupVerifyError: the backup fails verification; nothing was changed.
    """
    home = Path(home)
    if not confirm:
        audit.record(home, "restore", "refused: confirm is not true", who, backup=backup_id)
        raise ConfirmationRequired(
            f"restoring backup {backup_id} replaces the golden copy and the index: pass "
            "confirm: true (nova backup restore ID --yes)"
        )
    b = find_backup(home, backup_id)
    staging = Layout(home).restore_staging(b.id)
    remove_tree(staging)
    try:
        manifest = extract(b, staging)
        version = manifest["golden_version"]
        src_version = Layout(staging).golden / version
        failures = verify_tree(src_version)
        failures += open_check_in_subprocess(src_version)["failures"]
        if failures:
            raise BackupVerifyError(f"restored copy of {b.id} does not verify: {'; '.join(failures[:3])}")
        # store objects and dictionaries: add what is missing (content-addressed, so never overwritten)
        from nova_pipeline.core.store import ContentStore

        store = ContentStore(home)
        for p in Layout(staging).store_objects.rglob("*") if Layout(staging).store.exists() else []:
            if p.is_file():
                dest = store.objects / p.parent.name / p.name
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, dest.with_name(TMP_PREFIX + dest.name))
                    os.replace(dest.with_name(TMP_PREFIX + dest.name), dest)
        store.registry.dir.mkdir(parents=True, exist_ok=True)
        for z in (src_version / "dictionaries").glob("*.zdict"):
            if not store.registry.path(z.stem).exists():
                shutil.copy2(z, store.registry.path(z.stem))
        # the golden version: moved into place (if absent), then CURRENT switched atomically
        groot = golden_root(home)
        groot.mkdir(parents=True, exist_ok=True)
        if not (groot / version / MANIFEST).exists():
            remove_tree(groot / version)
            os.rename(src_version, groot / version)
            fsync_dir(groot)
        atomic_write_bytes(groot / CURRENT, (version + "\n").encode())
    except BaseException as exc:
        audit.record(home, "restore", f"failed: {exc}", who, backup=b.id)
        raise
    finally:
        remove_tree(staging)
    result = reset_index(home, chroma_url, True, who)
    return audit.record(
        home,
        "restore",
        "ok",
        who,
        backup=b.id,
        golden_version=version,
        vectors=result["details"].get("count"),
    )

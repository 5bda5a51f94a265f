"""Verification of backups, in three levels (restic's ``check`` / ``check --read-data`` / restore are
the model):

1. structure: the checksum file matches the archive, and the manifest is present;
2. full read: every member's blake3 matches the manifest, nothing is missing or extra;
3. restore drill: restore into a temp dir, open Chroma in a subprocess (count and self-retrieval),
   blake3-verify every store object, and ``pg_restore`` a dump into a scratch database.

Extraction refuses absolute paths, ``..``, links and devices (tarfile's ``data`` filter plus our own check).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import blake3
import pandas as pd
import zstandard as zstd

from nova_pipeline.core.errors import BackupVerifyError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.protect.backup.archive import (
    BACKUP_MANIFEST,
    PG_DUMP,
    BackupInfo,
    find_backup,
    mark_verified,
    open_archive,
    read_backup_manifest,
)
from nova_pipeline.core.protect.golden.verify import open_check_in_subprocess, verify_tree

__all__ = ["extract", "restore_drill", "unsafe_member", "verify", "verify_full", "verify_structure"]


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
            read_backup_manifest(b)
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
        with open_archive(b.path) as tar:
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
    with open_archive(b.path) as tar:
        for ti in tar:
            problem = unsafe_member(ti)
            if problem:
                raise BackupVerifyError(problem)
            tar.extract(ti, dest, filter="data")
    return manifest


def restore_drill(home: Path, b: BackupInfo, pg_admin_url: str | None = None) -> list[str]:
    """Level 3: restore into a temp dir and prove it works; one message per failure."""
    from nova_pipeline.core.compression.store import ContentStore

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
        mark_verified(b, min(max(level, 1), 3))
    elif b.verified_path.exists():
        b.verified_path.unlink()  # it failed now: it no longer counts as verified
    return failures

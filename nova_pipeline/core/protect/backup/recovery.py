"""Restoring a backup: extract to a new location, verify there, then switch atomically; audited."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nova_pipeline.core.atomic import TMP_PREFIX, atomic_write_bytes, fsync_dir
from nova_pipeline.core.errors import BackupVerifyError, ConfirmationRequired
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.protect import audit
from nova_pipeline.core.protect.backup.archive import find_backup
from nova_pipeline.core.protect.backup.checks import extract
from nova_pipeline.core.protect.golden.runtime import reset_index
from nova_pipeline.core.protect.golden.verify import open_check_in_subprocess, verify_tree
from nova_pipeline.core.protect.golden.versions import (
    CURRENT,
    MANIFEST,
    golden_root,
    pin_version,
    remove_tree,
)

__all__ = ["restore"]


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
        from nova_pipeline.core.compression.store import ContentStore

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
            pin_version(home, src_version)  # its objects are in the store now; pinned before it is listed
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

"""Backups: verified archives of the golden copy and the store, with retention and restore.

* :mod:`.archive`: writing, listing and retention (``NOVA_HOME/backups/backup_<UTC>.tar.zst``);
* :mod:`.checks`: the three verification levels and safe extraction;
* :mod:`.recovery`: restoring a backup, verified in a new location and switched to atomically.

The names below are the public surface; callers write ``backup.create_backup(...)``.
"""

from nova_pipeline.core.errors import BackupError, BackupVerifyError
from nova_pipeline.core.protect.backup.archive import (
    BACKUP_MANIFEST,
    DEFAULT_KEEP,
    DEFAULT_LEVEL,
    DEFAULT_THREADS,
    PG_DUMP,
    BackupInfo,
    BackupResult,
    apply_retention,
    backups_dir,
    create_backup,
    find_backup,
    list_backups,
    newest_backup,
    open_archive,
    read_backup_manifest,
)
from nova_pipeline.core.protect.backup.checks import (
    extract,
    restore_drill,
    unsafe_member,
    verify,
    verify_full,
    verify_structure,
)
from nova_pipeline.core.protect.backup.recovery import restore

__all__ = [
    "BACKUP_MANIFEST",
    "DEFAULT_KEEP",
    "DEFAULT_LEVEL",
    "DEFAULT_THREADS",
    "PG_DUMP",
    "BackupError",
    "BackupInfo",
    "BackupResult",
    "BackupVerifyError",
    "apply_retention",
    "backups_dir",
    "create_backup",
    "extract",
    "find_backup",
    "list_backups",
    "newest_backup",
    "open_archive",
    "read_backup_manifest",
    "restore",
    "restore_drill",
    "unsafe_member",
    "verify",
    "verify_full",
    "verify_structure",
]

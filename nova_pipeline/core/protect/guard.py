"""The guard against mass deletion: a missing mount must not wipe the index or the golden history.

An unmounted volume, a wrong ``NOVA_SOURCE_DIR`` or a broken ignore rule looks to an incremental pipeline
like "every file was deleted". Acting on it would delete the vectors and then promote an empty golden
version, and a few such runs would push every good version out of retention. The guard refuses such a
run before anything is written, and names the override for the case where the deletion is wanted.

Three places consult it:

* ``source_files`` (:meth:`DeletionGuard.check_source_dir`, :meth:`DeletionGuard.check_files`): files
  whose path is gone *and* whose content appears nowhere else in the tree are lost (a rename or a move is
  not a loss);
* ``vector_index`` (:meth:`DeletionGuard.check_vectors`): the net shrink of the collection (re-chunking
  that replaces ids one for one is not a loss);
* ``golden_copy`` (:meth:`DeletionGuard.check_golden`): a non-empty CURRENT is never replaced by an empty
  index.

A deletion is "mass" when it removes more than ``max_delete_fraction`` of what was there and at least
``min_deletions`` items (the absolute floor keeps small trees usable). Going from a non-empty state to
an empty one is always mass, whatever the floor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nova_pipeline.core.errors import MassDeletionError
from nova_pipeline.core.keys import SOURCE_FILES
from nova_pipeline.core.tables import in_set

__all__ = [
    "DEFAULT_MAX_DELETE_FRACTION",
    "DEFAULT_MIN_DELETIONS",
    "OVERRIDE",
    "OVERRIDE_HINT",
    "DeletionGuard",
]

DEFAULT_MAX_DELETE_FRACTION = 0.5
DEFAULT_MIN_DELETIONS = 10
OVERRIDE = "run config `resources: {guard: {config: {allow_mass_delete: true}}}` (CLI: --allow-mass-delete)"
OVERRIDE_HINT = f"If the deletion is wanted, rerun with {OVERRIDE}."


@dataclass(frozen=True)
class DeletionGuard:
    """When a run counts as a mass deletion, and whether it is allowed anyway.

    Attributes:
        max_delete_fraction: share (0-1) of the indexed files or vectors a run may delete.
        min_deletions: fewer deletions than this never count as mass (except going to empty).
        allow: the override: let the run delete whatever it would.
    """

    max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION
    min_deletions: int = DEFAULT_MIN_DELETIONS
    allow: bool = False

    def is_mass(self, before: int, deleted: int, after: int) -> bool:
        """Whether deleting ``deleted`` of ``before`` items (leaving ``after``) is a mass deletion."""
        if before <= 0 or deleted <= 0:
            return False
        if after == 0:
            return True
        return deleted >= self.min_deletions and deleted > self.max_delete_fraction * before

    def _refuse(self, what: str, before: int, deleted: int, cause: str) -> None:
        raise MassDeletionError(
            f"{what}: this run would delete {deleted:,} of {before:,} ({deleted / before:.0%}, "
            f"max_delete_fraction {self.max_delete_fraction:.0%}). {cause} Nothing was written. "
            f"{OVERRIDE_HINT}"
        )

    def check_source_dir(self, source_dir: str | os.PathLike | None, previous: pd.DataFrame | None) -> None:
        """Refuse a missing source dir when the previous manifest had files (the override cannot help here:
        point ``NOVA_SOURCE_DIR`` at an empty directory to empty the index on purpose).

        Raises:
            MassDeletionError: the directory is missing and files were indexed from it.
        """
        before = _present(previous)
        if before and source_dir and not Path(source_dir).is_dir():
            raise MassDeletionError(
                f"source_files: NOVA_SOURCE_DIR={source_dir} is missing, and {before:,} files are indexed "
                "from "
                "it. Is the volume mounted? Nothing was written. To empty the index on purpose, point "
                f"NOVA_SOURCE_DIR at an empty directory and rerun with {OVERRIDE}."
            )

    def check_files(self, previous: pd.DataFrame | None, manifest: pd.DataFrame) -> int:
        """Refuse a manifest that loses most indexed files; returns how many files are lost.

        A file is lost when its path is gone (status ``deleted``) and its blake3 is not among the present
        files (so renames and moves do not count).

        Raises:
            MassDeletionError: the loss is a mass deletion and the override is off.
        """
        deleted = (manifest["status"] == "deleted").to_numpy(dtype=bool)
        if not deleted.any():  # the common case, and a live update's: nothing to weigh
            return 0
        before = _present(previous)
        if not before:
            return 0
        present = manifest[~deleted]
        gone = manifest[deleted & ~in_set(manifest["blake3"], present["blake3"])]
        lost = len(gone)
        if not self.allow and self.is_mass(before, lost, len(present)):
            cause = (
                "The source tree is empty: is the volume mounted, is NOVA_SOURCE_DIR right?"
                if present.empty
                else f"e.g. {', '.join(gone['path'].head(3))} are gone."
            )
            self._refuse(SOURCE_FILES, before, lost, cause)
        return lost

    def check_vectors(self, before: int, after: int, collection: str) -> None:
        """Refuse shrinking a collection from ``before`` to ``after`` vectors when that is a mass deletion.

        Raises:
            MassDeletionError: as above.
        """
        if not self.allow and self.is_mass(before, before - after, after):
            self._refuse(
                f"vector_index ({collection})",
                before,
                before - after,
                f"The chunks table asks for {after:,} vectors.",
            )

    def check_golden(self, current_count: int, new_count: int, current_name: str) -> None:
        """Refuse replacing a non-empty CURRENT golden version with an empty index.

        Raises:
            MassDeletionError: as above.
        """
        if not self.allow and current_count > 0 and new_count == 0:
            self._refuse(
                f"golden_copy (CURRENT {current_name})",
                current_count,
                current_count,
                "The index is empty; promoting it would start pushing good versions out of retention.",
            )


def _present(manifest: pd.DataFrame | None) -> int:
    if manifest is None or manifest.empty:
        return 0
    return int((manifest["status"] != "deleted").sum())

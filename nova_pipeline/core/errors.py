"""The one exception hierarchy of nova_pipeline.

Every message names the file or object involved and says what to do next, so a user who reads only the
last line of a failed run knows where to look.
"""

from __future__ import annotations

__all__ = [
    "BackupError",
    "BackupVerifyError",
    "ConfirmationRequired",
    "DictionaryError",
    "EmbeddingError",
    "FailoverError",
    "GoldenCopyError",
    "IndexNotBuiltError",
    "InvalidRequestError",
    "LockTimeoutError",
    "MassDeletionError",
    "MemoryLimitError",
    "NovaError",
    "QueryTimeoutError",
    "ScanError",
    "SettingsError",
    "StoreCorruptError",
    "StoreError",
    "TableNotMaterializedError",
    "VectorStoreError",
]


class NovaError(Exception):
    """Base class for every error raised by ``nova_pipeline.core``."""


class InvalidRequestError(NovaError, ValueError):
    """An argument is outside what the call accepts (an unknown search mode, a bad name); also a
    ``ValueError``, so callers that catch that keep working."""


class SettingsError(NovaError):
    """A setting (environment variable or config field) is missing or invalid."""


class ScanError(NovaError):
    """The source tree cannot be scanned at all (a single bad file is a logged skip, not this)."""


class StoreError(NovaError):
    """The compressed content-addressed store cannot be written or read."""


class StoreCorruptError(StoreError):
    """A stored object does not decompress, or its content does not match its blake3 key."""


class MemoryLimitError(NovaError):
    """A stage would exceed its configured memory limit."""


class DictionaryError(NovaError):
    """A zstd dictionary cannot be trained, loaded or verified."""


class IndexNotBuiltError(NovaError):
    """Search or a check ran before the vector index was built."""


class VectorStoreError(NovaError):
    """The vector store (Chroma) is unreachable or returned something inconsistent."""


class QueryTimeoutError(VectorStoreError):
    """A query to the vector store did not finish within its deadline (``NOVA_QUERY_TIMEOUT``)."""


class EmbeddingError(NovaError):
    """The embedding model cannot be loaded or failed on a batch."""


class GoldenCopyError(NovaError):
    """A golden copy cannot be made, verified or used."""


class BackupError(NovaError):
    """A backup cannot be created or restored."""


class BackupNotFoundError(BackupError):
    """No published backup has the id asked for."""


class BackupVerifyError(BackupError):
    """A backup failed verification; the message names the member."""


class ConfirmationRequired(NovaError):
    """A destructive operation ran without ``confirm: true``."""


class MassDeletionError(NovaError):
    """A run would delete most of what is indexed (an unmounted volume looks like an empty tree); refused."""


class LockTimeoutError(NovaError):
    """A lock of ``NOVA_HOME`` (:mod:`nova_pipeline.core.locks`) stayed held by another writer too long."""


class TableNotMaterializedError(NovaError):
    """A table asset that a step reads has never been materialized under this ``NOVA_HOME``."""


class FailoverError(NovaError):
    """Failing over to the backup store, or back to the primary, cannot be done; the message says why."""

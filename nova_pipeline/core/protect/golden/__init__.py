"""Golden copies: verified, read-only, versioned snapshots of the built index, and the runtime copy made
from them.

* :mod:`.versions`: names, listing, ``CURRENT``, retention and the store pins of each version;
* :mod:`.export`: the portable export (vectors in Parquet shards) and applying it to a Chroma store;
* :mod:`.promotion`: building, verifying and committing a new version, only when something changed;
* :mod:`.verify`: the manifest, the export without a database, and an open check in a subprocess;
* :mod:`.runtime`: the runtime copy and the reset of the primary index from ``CURRENT``.

The names below are the group's public surface; callers write ``golden.promote(...)``.
"""

from nova_pipeline.core.protect.golden.export import (
    EXPORT_DIR,
    EXPORT_SHARDS,
    SHARD_CHUNKS,
    chunks_from_export,
    embedding_matrix,
    export_files,
    export_shards,
    import_export,
    read_shard,
    restore_lexical,
    shard_of,
    table_bytes,
)
from nova_pipeline.core.protect.golden.promotion import Promotion, content_key, promote, shard_digests
from nova_pipeline.core.protect.golden.runtime import (
    Applied,
    forget_cached_clients,
    make_runtime_copy,
    reset_index,
    runtime_dir,
    runtime_version,
)
from nova_pipeline.core.protect.golden.verify import (
    open_check,
    open_check_in_subprocess,
    verify_export,
    verify_tree,
)
from nova_pipeline.core.protect.golden.versions import (
    CURRENT,
    DEFAULT_KEEP,
    LEXICAL_DELTA,
    LEXICAL_DIR,
    MANIFEST,
    PARTIAL_PREFIX,
    VERIFIED,
    GoldenVersion,
    apply_retention,
    current_version,
    golden_root,
    list_versions,
    new_stamp,
    read_manifest,
    remove_tree,
    stamp_key,
    sync_pins,
)

__all__ = [
    "CURRENT",
    "VERIFIED",
    "DEFAULT_KEEP",
    "EXPORT_DIR",
    "EXPORT_SHARDS",
    "SHARD_CHUNKS",
    "export_shards",
    "LEXICAL_DELTA",
    "LEXICAL_DIR",
    "MANIFEST",
    "PARTIAL_PREFIX",
    "Applied",
    "GoldenVersion",
    "Promotion",
    "apply_retention",
    "chunks_from_export",
    "content_key",
    "current_version",
    "embedding_matrix",
    "export_files",
    "forget_cached_clients",
    "golden_root",
    "import_export",
    "list_versions",
    "make_runtime_copy",
    "new_stamp",
    "open_check",
    "open_check_in_subprocess",
    "promote",
    "read_manifest",
    "read_shard",
    "remove_tree",
    "reset_index",
    "restore_lexical",
    "runtime_dir",
    "runtime_version",
    "shard_digests",
    "shard_of",
    "stamp_key",
    "sync_pins",
    "table_bytes",
    "verify_export",
    "verify_tree",
]

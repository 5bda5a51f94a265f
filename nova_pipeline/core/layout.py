"""Where everything lives under ``NOVA_HOME``: the one owner of the state directory's layout.

Every layer (core, the Dagster glue, the IO manager, the CLI, the service) asks a :class:`Layout` for a path
instead of joining strings, so the layout can change in one place and two parts can never disagree::

    NOVA_HOME/
      tables/<name>.parquet          DataFrame assets (names in nova_pipeline.core.tables)
      store/objects/ab/cdef...       compressed content-addressed store; store/index.parquet commits it
      store/pins/<name>.parquet      the store's GC roots (one per golden version)
      dictionaries/<blake3>.zdict    zstd dictionaries; current.json names the current one
      cache/embeddings/<fp>.sqlite3  embedding cache per model fingerprint
      cache/patterns/                pattern-analysis shard cache
      vectors/                       embedded Chroma data dir (unless NOVA_CHROMA_URL)
      vectors.writes/<generation>.npz   nova watch's recent writes, for readers whose view is older
      vectors.lock                   the writer lock; locks/vectors-bucket-NN.lock the bucket locks
                                     (the one lock order: nova_pipeline.core.locks)
      steps/<run id>/                outputs of the inner ops of vector_index (small pickles)
      lexical/<digest>/, lexical/CURRENT   BM25 indexes of the chunks; CURRENT names the live one
      vectors.verified.json          what was verified against the collection, at which state
      golden/<version>/, golden/CURRENT
      runtime/vectors/, runtime/version.json   the writable copy made from CURRENT
      backups/backup_<UTC>.tar.zst (+ .blake3, .verified)
      failover/state.json, failover/journal/   the active-store pointer and the write journal
      logs/                          JSON-lines logs
      tokens.json                    hashed API tokens of `nova serve`
      audit.log                      one JSON line per destructive or admin operation
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """Paths under one ``NOVA_HOME`` (absolute when built from
    :class:`~nova_pipeline.core.settings.Settings`)."""

    home: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))

    @classmethod
    def of(cls, home: str | os.PathLike | Layout) -> Layout:
        """A layout from a home path (or a layout, returned as is)."""
        return home if isinstance(home, Layout) else cls(Path(home))

    # tables
    @property
    def tables(self) -> Path:
        return self.home / "tables"

    def table(self, name: str) -> Path:
        """The Parquet file of table ``name``."""
        return self.tables / f"{name}.parquet"

    # compression
    @property
    def store(self) -> Path:
        return self.home / "store"

    @property
    def store_objects(self) -> Path:
        return self.store / "objects"

    @property
    def store_index(self) -> Path:
        return self.store / "index.parquet"

    @property
    def store_pins(self) -> Path:
        """The store's GC roots: one ``<name>.parquet`` of ``key, dict_blake3`` per pin."""
        return self.store / "pins"

    @property
    def dictionaries(self) -> Path:
        return self.home / "dictionaries"

    @property
    def patterns_cache(self) -> Path:
        return self.home / "cache" / "patterns"

    # embeddings and vectors
    def embedding_cache(self, fingerprint: str) -> Path:
        """The SQLite file of the embedding cache of a model fingerprint."""
        return self.home / "cache" / "embeddings" / f"{fingerprint}.sqlite3"

    @property
    def vectors(self) -> Path:
        return self.home / "vectors"

    @property
    def vectors_lock(self) -> Path:
        return self.home / "vectors.lock"

    @property
    def vectors_generation(self) -> Path:
        """Changes every time a writer releases the writer lock (see ``nova_pipeline.core.locks``)."""
        return self.home / "vectors.generation"

    @property
    def vectors_writes(self) -> Path:
        """``nova watch``'s recent writes of the primary, one file per hold of the writer lock (see
        ``nova_pipeline.core.index.recent_writes``)."""
        return self.home / "vectors.writes"

    def vectors_bucket_lock(self, bucket: int) -> Path:
        """The lock of one bucket of the vector store (server-mode writers of a slice hold it)."""
        return self.home / "locks" / f"vectors-bucket-{bucket:02d}.lock"

    @property
    def step_outputs(self) -> Path:
        """Pickled outputs of the inner ops of graph-backed assets (shared by every executor's workers)."""
        return self.home / "steps"

    @property
    def lexical(self) -> Path:
        """Lexical (BM25) index directories, one per chunk-set digest."""
        return self.home / "lexical"

    @property
    def lexical_current(self) -> Path:
        """Names the live lexical index directory."""
        return self.lexical / "CURRENT"

    @property
    def verified_record(self) -> Path:
        return self.home / "vectors.verified.json"

    @property
    def verified_ids(self) -> Path:
        """The chunk ids the embedded collection held when it was last reconciled (Arrow IPC)."""
        return self.home / "vectors.verified.ids.arrow"

    # golden copies, runtime copy, backups
    @property
    def golden(self) -> Path:
        return self.home / "golden"

    @property
    def runtime(self) -> Path:
        return self.home / "runtime"

    @property
    def runtime_vectors(self) -> Path:
        return self.runtime / "vectors"

    @property
    def runtime_version(self) -> Path:
        return self.runtime / "version.json"

    @property
    def backups(self) -> Path:
        return self.home / "backups"

    def restore_staging(self, backup_id: str) -> Path:
        return self.home / f".restore-{backup_id}"

    # operating
    @property
    def failover(self) -> Path:
        return self.home / "failover"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def tokens(self) -> Path:
        return self.home / "tokens.json"

    @property
    def audit_log(self) -> Path:
        return self.home / "audit.log"

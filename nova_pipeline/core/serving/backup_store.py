"""The backup store that answers searches when the primary cannot: made from the CURRENT golden copy.

Two kinds (the resource zones of :mod:`.estimate` choose):

* **on disk**: the runtime copy, ``NOVA_HOME/runtime/vectors``, a Chroma data dir kept equal to CURRENT by
  ``golden_copy`` (and written while failed over). Read through a :class:`~.views.ViewCache`, so writes of
  other processes are seen;
* **in memory**: CURRENT's export loaded into an in-process Chroma (``nova serve``, when the zone allows):
  no disk reads on the query path. Loading takes seconds per 10,000 vectors, so it happens in a background
  thread (:meth:`BackupStore.preload`, at the service's start, and again when CURRENT changes); until it is
  ready, the on-disk copy answers.

Every answer says when the golden version it came from was made (``stale_as_of``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from nova_pipeline.core.errors import FailoverError, IndexNotBuiltError, NovaError
from nova_pipeline.core.serving.estimate import DISK, MEMORY, Estimate, estimate_for_version
from nova_pipeline.core.serving.views import ViewCache
from nova_pipeline.core.settings import Settings

__all__ = ["BackupStore"]

log = logging.getLogger(__name__)


@dataclass
class _Memory:
    version: str
    collection: object


class BackupStore:
    """The backup store of one ``NOVA_HOME``: in memory when the estimate allows and ``prefer_memory``, else
    the on-disk runtime copy. Thread-safe.

    Attributes:
        version, created_at: the golden version the last answer came from.
        kind: ``memory`` or ``disk``: what answered last.
        estimate: the resource estimate of CURRENT.
    """

    def __init__(self, settings: Settings, fingerprint: str, max_memory_mb: int, prefer_memory: bool = True):
        self.settings, self.fingerprint = settings, fingerprint
        self.max_memory_mb, self.prefer_memory = max_memory_mb, prefer_memory
        self._lock = threading.Lock()
        self._disk = ViewCache(settings.home, settings.layout.runtime_vectors, fingerprint)
        self._memory: _Memory | None = None
        self._loading: threading.Thread | None = None
        self._load_error = ""
        self._versions: dict[str, tuple[str, Estimate]] = {}  # CURRENT name -> (created_at, estimate)
        self.version: str | None = None
        self.created_at: str | None = None
        self.kind: str | None = None
        self.estimate: Estimate | None = None

    def _current(self) -> tuple[str, str, Estimate]:
        """``(name, created_at, estimate)`` of CURRENT, reading only its pointer when it did not change.

        Raises:
            IndexNotBuiltError: there is no golden copy yet.
        """
        from nova_pipeline.core.protect import golden

        root = golden.golden_root(self.settings.home)
        try:
            name = (root / golden.CURRENT).read_text().strip()
        except OSError:
            name = ""
        if not name:
            raise IndexNotBuiltError(
                "no golden copy to answer from: run the rebuild job while the primary is up"
            )
        with self._lock:
            known = self._versions.get(name)
        if known is None:
            cur = golden.current_version(self.settings.home)
            if cur is None:
                raise IndexNotBuiltError("no golden copy to answer from: run the rebuild job")
            est = estimate_for_version(
                cur, max_memory_mb=self.max_memory_mb, disk_copy=self.settings.layout.runtime_vectors.is_dir()
            )
            known = (cur.created_at, est)
            with self._lock:
                self._versions = {name: known}
        return name, known[0], known[1]

    def wants_memory(self) -> bool:
        """Whether CURRENT should be held in memory (the estimate chose it, and this searcher prefers it)."""
        try:
            _, _, est = self._current()
        except NovaError:
            return False
        return self.prefer_memory and est.choice == MEMORY

    def preload(self) -> threading.Thread | None:
        """Start loading CURRENT into memory in a background thread when the zone picks memory (and it is not
        loaded or loading already); returns the thread, or None."""
        if not self.wants_memory():
            return None
        name, _, _ = self._current()
        with self._lock:
            if (self._memory is not None and self._memory.version == name) or (
                self._loading is not None and self._loading.is_alive()
            ):
                return self._loading
            self._loading = threading.Thread(
                target=self._load_memory, args=(name,), name="backup-preload", daemon=True
            )
            self._loading.start()
            return self._loading

    def _load_memory(self, name: str) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        from nova_pipeline.core.index.vector_store import SLIM
        from nova_pipeline.core.protect import golden

        try:
            cur = golden.current_version(self.settings.home)
            if cur is None or cur.name != name:
                return
            client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
            col_name = f"backup-{self.fingerprint}-{name}"[:500]
            with contextlib.suppress(Exception):  # a half-loaded one from an earlier attempt
                client.delete_collection(col_name)
            col = client.get_or_create_collection(  # slim records: texts come from the golden lexical index
                col_name,
                metadata={"records": SLIM},
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=None,
            )
            golden.import_export(col, cur.path)
            with self._lock:
                old, self._memory, self._load_error = self._memory, _Memory(name, col), ""
            if old is not None:
                with contextlib.suppress(Exception):  # in-flight queries on it fail over to the disk copy
                    client.delete_collection(old.collection.name)
            log.info("backup store: golden version %s loaded in memory (%d vectors)", name, col.count())
        except Exception as exc:  # noqa: BLE001 - a failed load leaves the on-disk copy answering; logged
            with self._lock:
                self._load_error = f"{type(exc).__name__}: {exc}"
            log.error("backup store: loading golden version %s in memory failed: %s", name, exc)

    @contextlib.contextmanager
    def collection(self) -> Iterator[tuple[object, str]]:
        """``(collection, golden version created_at)`` of the backup store, for the block: the in-memory copy
        when it holds CURRENT, else the on-disk runtime copy (when memory is wanted and not loaded yet, its
        load is started in the background). With no runtime copy, a wanted in-memory copy is loaded now.

        Raises:
            IndexNotBuiltError: there is no golden copy yet.
            FailoverError: neither kind of backup store can be had (the estimate's refusal, or no runtime
                copy and a failed load).
        """
        name, created_at, est = self._current()
        self.estimate = est
        memory = self._memory
        if est.choice == "refuse":
            raise FailoverError(est.message)
        if self.prefer_memory and est.choice == MEMORY and (memory is None or memory.version != name):
            loading = self.preload()
            if not self.settings.layout.runtime_vectors.is_dir() and loading is not None:
                loading.join()  # nothing else can answer: wait for the load
                memory = self._memory
        if memory is not None and memory.version == name and self.prefer_memory:
            self.version, self.created_at, self.kind = name, created_at, MEMORY
            yield memory.collection, created_at
            return
        try:
            with self._disk.collection() as (col, _count):
                self.version, self.created_at, self.kind = name, created_at, DISK
                yield col, created_at
        except IndexNotBuiltError as exc:
            raise FailoverError(
                f"no backup store can answer: the runtime copy is missing ({exc})"
                + (f"; the in-memory load failed: {self._load_error}" if self._load_error else "")
            ) from exc

    def close(self) -> None:
        self._disk.close()

"""The compressed content-addressed store under ``NOVA_HOME/store``.

Layout::

    store/objects/ab/cdef...   one zstd frame per unique content, keyed by blake3 of the *uncompressed* bytes
    store/index.parquet        key, dict_blake3, dict_id, size, stored_size (the commit marker)

Each frame records its dictionary id and content size and carries no zstd checksum: the key verifies the
content on every read. New objects are written in batches: temp files in their final directory, one
``syncfs`` for the batch, then renames and a directory fsync, so no partial object is ever visible and
none is referenced before it is durable. Only objects named by the committed index are trusted; anything
else (from a killed run) is rewritten when needed and removed by garbage collection, which runs only after
a new index is committed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pandas as pd
import zstandard as zstd

from nova_pipeline.core.atomic import TMP_PREFIX, atomic_write_with, syncfs
from nova_pipeline.core.compression.dictionary import NO_DICTIONARY, DictionaryRegistry, compressor
from nova_pipeline.core.errors import DictionaryError, InvalidRequestError, StoreCorruptError, StoreError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.tables import in_set, parquet_attrs, write_parquet

__all__ = [
    "BATCH_BYTES",
    "BATCH_FILES",
    "DEFAULT_THREADS",
    "INDEX_COLUMNS",
    "ContentStore",
    "PutStats",
    "StoreUpdate",
    "inputs_digest",
    "update_store",
]

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["key", "dict_blake3", "dict_id", "size", "stored_size"]
DEFAULT_THREADS = -1  # compression threads: every core
BATCH_BYTES = 32 * 1024 * 1024
BATCH_FILES = 1000


@dataclass
class PutStats:
    """Counts of one :meth:`ContentStore.put_many`. Bytes are bytes; seconds wall-clock."""

    requested: int = 0  # compress_seconds covers compression and the round-trip check, not file I/O
    already_stored: int = 0
    written: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    compress_seconds: float = 0.0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        """Raw MB (10^6 bytes) stored per second, end to end (read, compress, verify, write)."""
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0


class ContentStore:
    """Read and write the store of one ``NOVA_HOME``."""

    def __init__(self, home: Path):
        layout = Layout.of(home)
        self.home = layout.home
        self.root = layout.store
        self.objects = layout.store_objects
        self._objects_str = str(self.objects)
        self.index_path = layout.store_index
        self.pins_dir = layout.store_pins
        self.registry = DictionaryRegistry(self.home)
        self._dctx: dict[int, zstd.ZstdDecompressor] = {}
        self._index: pd.DataFrame | None = None

    # ---- index -------------------------------------------------------------------------------------
    def index(self) -> pd.DataFrame:
        """The committed index (empty before the first commit)."""
        if self._index is None:
            if self.index_path.exists():
                self._index = pd.read_parquet(self.index_path)
            else:
                self._index = pd.DataFrame(
                    {
                        c: pd.Series(dtype="int64" if c in ("dict_id", "size", "stored_size") else "str")
                        for c in INDEX_COLUMNS
                    }
                )
        return self._index

    def commit_index(self, index: pd.DataFrame, attrs: dict[str, str] | None = None) -> None:
        """Atomically replace the index: the commit point of a store update. ``attrs``: what made it, kept
        in its footer (:meth:`index_attrs`); a commit without them clears them.

        The first commit of a new store also starts its pin records (see :meth:`pin`): a store created
        with them can collect garbage at once.
        """
        index = index[INDEX_COLUMNS].sort_values("key", ignore_index=True)
        if not self.index_path.exists() and not self.pins_dir.exists():
            self.pins_dir.mkdir(parents=True, exist_ok=True)
        write_parquet(self.index_path, index, attrs)
        self._index = index

    def index_attrs(self) -> dict[str, str]:
        """The attributes the last commit kept in the index's footer ({} without them or without an index;
        only the footer is read)."""
        return parquet_attrs(self.index_path) or {}

    # ---- pins: the store's own GC roots ------------------------------------------------------------
    def pin(self, name: str, refs: pd.DataFrame) -> None:
        """Keep the objects and dictionaries of ``refs`` (``key, dict_blake3`` rows, e.g. a golden version's
        store index) through every garbage collection until :meth:`unpin` ``(name)``, as a git ref keeps
        its commits. Written atomically; pinning a name again replaces its rows.

        Raises:
            OSError: the pin cannot be written (nothing else changed).
        """
        _check_pin_name(name)
        rows = refs[["key", "dict_blake3"]].drop_duplicates().sort_values("key", ignore_index=True)
        self.pins_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_with(self.pins_dir / f"{name}.parquet", lambda fh: rows.to_parquet(fh, index=False))

    def unpin(self, name: str) -> bool:
        """Drop the pin ``name``; whether there was one. Its objects go at the next garbage collection
        unless the index or another pin still refers to them."""
        _check_pin_name(name)
        try:
            (self.pins_dir / f"{name}.parquet").unlink()
            return True
        except FileNotFoundError:
            return False

    def pins(self) -> list[str]:
        """Names of the pins, sorted."""
        if not self.pins_dir.exists():
            return []
        return sorted(p.stem for p in self.pins_dir.glob("*.parquet"))

    def pinned(self) -> tuple[set[str], set[str]]:
        """``(keys, dictionary blake3s)`` every pin keeps.

        Raises:
            StoreCorruptError: a pin file cannot be read (garbage collection must not guess).
        """
        keys: set[str] = set()
        dictionaries: set[str] = set()
        for name in self.pins():
            path = self.pins_dir / f"{name}.parquet"
            try:
                df = pd.read_parquet(path, columns=["key", "dict_blake3"])
            except FileNotFoundError:
                continue  # unpinned meanwhile
            except (OSError, ValueError) as exc:
                raise StoreCorruptError(
                    f"the store pin {path.name} cannot be read ({exc}): garbage collection stops rather than "
                    "delete what it may protect; run the rebuild job, whose golden_copy rewrites the pins"
                ) from exc
            keys.update(df["key"])
            dictionaries.update(d for d in df["dict_blake3"] if d)
        return keys, dictionaries

    def object_path(self, key: str) -> str:
        """Path of the object of ``key`` (a string: this is on the hot path of every read and write)."""
        return f"{self._objects_str}/{key[:2]}/{key[2:]}"

    # ---- write -------------------------------------------------------------------------------------
    def put_many(
        self,
        items: Sequence[tuple[str, str]],
        dict_digest: str,
        level: int = 3,
        threads: int = -1,
        progress: Callable[..., None] | None = None,
    ) -> tuple[pd.DataFrame, PutStats]:
        """Store the contents of ``(blake3 key, source path)`` items that are not stored yet.

        Each file is read, checked against its key, compressed (``multi_compress_to_buffer``, ``threads``
        threads), decompressed again and re-checked before it is written. A file that vanished or changed
        since the scan is skipped and logged; it never lands under a wrong key.

        ``progress(objects_done, objects_to_store)`` is called after each batch is durable.

        Returns:
            ``(rows, stats)``: index rows (:data:`INDEX_COLUMNS`) of every requested key now stored, and
            counts. The caller commits them with :meth:`commit_index`.

        Raises:
            StoreError: a write failed (e.g. ``ENOSPC``); temp files are removed, committed data is intact.
        """
        started = time.perf_counter()
        stats = PutStats(requested=len(items))
        dict_bytes = self.registry.load(dict_digest)
        dict_id = zstd.ZstdCompressionDict(dict_bytes).dict_id() if dict_bytes else 0
        cctx = compressor(dict_bytes, level)
        dctx = self._decompressor_for(dict_id, dict_bytes)
        index = self.index()
        # one dict of plain rows, not a pandas lookup per key (0.59 s for 2,989 stored objects)
        committed = {
            row[0]: row
            for row in zip(
                index["key"].tolist(),
                index["dict_blake3"].tolist(),
                index["dict_id"].astype("int64").tolist(),
                index["size"].astype("int64").tolist(),
                index["stored_size"].astype("int64").tolist(),
            )
        }
        rows: list[tuple[str, str, int, int, int]] = []
        todo: list[tuple[str, str]] = []
        seen: set[str] = set()
        for key, path in items:
            if key in seen:
                continue
            seen.add(key)
            stored = committed.get(key)
            if stored is not None and os.path.exists(self.object_path(key)):
                rows.append(stored)
                stats.already_stored += 1
            else:
                todo.append((key, str(path)))
        skipped: dict[str, int] = {}
        batch: list[tuple[str, bytes]] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, batch_bytes
            if not batch:
                return
            t0 = time.perf_counter()
            frames = cctx.multi_compress_to_buffer([d for _, d in batch], threads=threads)
            # Round trip: decompress every frame again (in parallel) and check it against its key.
            plain = dctx.multi_decompress_to_buffer(frames, threads=threads)
            out: list[tuple[str, bytes]] = []
            for (key, data), frame, back in zip(batch, frames, plain):
                if blake3.blake3(back).hexdigest() != key:
                    raise StoreCorruptError(f"round trip of {key} did not reproduce its content; not stored")
                frame_bytes = frame.tobytes()
                out.append((key, frame_bytes))
                rows.append((key, dict_digest, dict_id, len(data), len(frame_bytes)))
                stats.bytes_in += len(data)
                stats.bytes_out += len(frame_bytes)
            stats.compress_seconds += time.perf_counter() - t0
            self._write_batch(out)
            stats.written += len(out)
            batch, batch_bytes = [], 0
            if progress is not None:
                progress(stats.written, len(todo), stats.bytes_in)

        for key, path in todo:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                skipped["vanished"] = skipped.get("vanished", 0) + 1
                log.warning("not stored: %s vanished since the scan", path)
                continue
            except OSError as exc:
                skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                log.warning("not stored: %s is unreadable (%s)", path, exc)
                continue
            if blake3.blake3(data).hexdigest() != key:
                skipped["changed_since_scan"] = skipped.get("changed_since_scan", 0) + 1
                log.warning("not stored: %s changed since the scan; the next rebuild will store it", path)
                continue
            batch.append((key, data))
            batch_bytes += len(data)
            if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_FILES:
                flush()
        flush()
        stats.skipped = skipped
        stats.seconds = time.perf_counter() - started
        return pd.DataFrame(rows, columns=INDEX_COLUMNS), stats

    def _write_batch(self, objects: Sequence[tuple[str, bytes]]) -> None:
        """Write temp files, syncfs once, rename into place, syncfs again (covers the directory entries)."""
        temps: list[tuple[str, str]] = []
        made: set[str] = set()
        suffix = f".{os.getpid()}"
        try:
            for key, frame in objects:
                final = self.object_path(key)
                parent = final[: -len(key) + 1]
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                tmp = f"{parent}{TMP_PREFIX}{key[2:]}{suffix}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
                temps.append((tmp, final))
                try:
                    view = memoryview(frame)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            syncfs(self.objects)
            for tmp, final in temps:
                os.replace(tmp, final)
            syncfs(self.objects)
        except OSError as exc:
            for tmp, _ in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            hint = "free disk space and rerun" if exc.errno == errno.ENOSPC else "check the disk and rerun"
            raise StoreError(
                f"writing to the store {self.objects} failed: {exc.strerror or exc}; {hint}. "
                "Committed objects are intact."
            ) from exc

    # ---- read --------------------------------------------------------------------------------------
    def _decompressor_for(self, dict_id: int, dict_bytes: bytes | None = None) -> zstd.ZstdDecompressor:
        if dict_id not in self._dctx:
            if dict_id == 0:
                self._dctx[0] = zstd.ZstdDecompressor()
            else:
                if dict_bytes is None:
                    digest = self.registry.by_dict_id().get(dict_id)
                    if digest is None:
                        raise StoreCorruptError(
                            f"no dictionary with dict_id {dict_id} under {self.registry.dir}; restore it"
                        )
                    dict_bytes = self.registry.load(digest)
                self._dctx[dict_id] = zstd.ZstdDecompressor(dict_data=zstd.ZstdCompressionDict(dict_bytes))
        return self._dctx[dict_id]

    def get(self, key: str) -> bytes:
        """The content stored under ``key``, verified against it.

        Raises:
            KeyError: nothing is stored under ``key``.
            StoreCorruptError: the object does not decompress or its blake3 differs; names key and file.
        """
        path = self.object_path(key)
        try:
            with open(path, "rb") as fh:
                frame = fh.read()
        except FileNotFoundError:
            raise KeyError(key) from None
        try:
            params = zstd.get_frame_parameters(frame)
            data = self._decompressor_for(params.dict_id).decompress(frame)
        except zstd.ZstdError as exc:
            raise StoreCorruptError(f"object {key} ({path}) does not decompress: {exc}") from exc
        except (StoreCorruptError, DictionaryError) as exc:
            raise StoreCorruptError(f"object {key} ({path}) cannot be read: {exc}") from exc
        if blake3.blake3(data).hexdigest() != key:
            raise StoreCorruptError(f"object {key} ({path}) does not match its key: its content is corrupt")
        return data

    def verify(self, keys: Iterable[str]) -> list[str]:
        """Round-trip every key; returns one message per failing object (empty when all verify)."""
        failures = []
        for key in keys:
            try:
                self.get(key)
            except KeyError:
                failures.append(f"object {key} ({self.object_path(key)}) is missing")
            except StoreCorruptError as exc:
                failures.append(str(exc))
        return failures

    def sample_keys(self, n: int, seed: int | None = None) -> list[str]:
        """All keys of the index, or a random sample of ``n`` when there are more."""
        keys = self.index()["key"].tolist()
        if n <= 0 or len(keys) <= n:
            return keys
        return random.Random(seed).sample(keys, n)

    # ---- garbage collection ------------------------------------------------------------------------
    def collect_garbage(self) -> tuple[int, int]:
        """Remove objects that neither the committed index nor any pin refers to, then dictionaries that
        neither refers to, and stale temp files.

        Pins are the store's GC roots: golden versions (and so the backups made of them) pin what they need
        when they are promoted, and keep needing it after the tree has moved on. This is the only garbage
        collection there is, so no caller can forget them. A store made before pins existed (no
        ``store/pins/`` yet) collects nothing until the golden copy has recorded its pins.

        Returns:
            ``(objects removed, bytes freed)``.

        Raises:
            StoreCorruptError: a pin cannot be read; nothing was removed.
        """
        if not self.pins_dir.exists():
            log.info(
                "store garbage collection deferred: %s has no pin records yet (a store from before "
                "pins); the next golden_copy writes them",
                self.root,
            )
            return 0, 0
        pinned_keys, pinned_dictionaries = self.pinned()
        self.registry.remove_unreferenced(self.dictionaries_in_use() | pinned_dictionaries)
        live = set(self.index()["key"]) | pinned_keys
        removed = freed = 0
        if not self.objects.exists():
            return 0, 0
        for sub in self.objects.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.startswith(TMP_PREFIX) or sub.name + f.name not in live:
                    with contextlib.suppress(FileNotFoundError):
                        freed += f.stat().st_size
                        f.unlink()
                        removed += 1
        return removed, freed

    def dictionaries_in_use(self) -> set[str]:
        """blake3 names of the dictionaries the committed index refers to."""
        return set(self.index()["dict_blake3"]) - {NO_DICTIONARY}


def _check_pin_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or len(name) > 200:
        raise InvalidRequestError(f"a pin name is a plain file name, not {name!r}")


@dataclass
class StoreUpdate:
    """Outcome of :func:`update_store`; ``unchanged``: the index was kept as it was (see
    :func:`inputs_digest`)."""

    put: PutStats
    objects: int
    raw_bytes: int
    stored_bytes: int
    dedup_saved_bytes: int
    removed_objects: int
    freed_bytes: int

    unchanged: bool = False

    @property
    def ratio(self) -> float:
        """Raw over stored bytes, over every object of the index."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0


def update_store(
    store: ContentStore,
    root: Path,
    manifest: pd.DataFrame,
    dict_digest: str,
    level: int = 3,
    threads: int = DEFAULT_THREADS,
    progress: Callable[..., None] | None = None,
) -> StoreUpdate:
    """Store every unique content of ``manifest``, commit the new index, then collect garbage; or, when the
    index's footer holds this update's :func:`inputs_digest`, keep the index as it is (``unchanged``).

    Objects outside the new index are removed only after it is committed, and never those a golden
    pin keeps (see :meth:`ContentStore.collect_garbage`).

    Raises:
        StoreError: a write failed; the previous index stays committed.
    """
    from nova_pipeline.core.ingest.manifest import present_files, unique_contents

    digest = inputs_digest(store, manifest, dict_digest, level)
    kept = store.index_attrs().get("inputs_digest") == digest
    if kept:
        rows = store.index()
        put = PutStats(requested=len(rows), already_stored=len(rows))
        removed = freed = 0
    else:
        items = unique_contents(root, manifest)
        rows, put = store.put_many(items, dict_digest, level=level, threads=threads, progress=progress)
        store.commit_index(rows)
        removed, freed = store.collect_garbage()
        if not put.skipped:  # only now is the update whole (a skipped file is tried again next time)
            store.commit_index(rows, {"inputs_digest": inputs_digest(store, manifest, dict_digest, level)})
    live = present_files(manifest)
    stored_keys = set(rows["key"])
    dup_bytes = int(live.loc[in_set(live["blake3"], stored_keys), "size"].sum()) - int(rows["size"].sum())
    return StoreUpdate(
        put=put,
        objects=len(rows),
        raw_bytes=int(rows["size"].sum()),
        stored_bytes=int(rows["stored_size"].sum()),
        dedup_saved_bytes=max(0, dup_bytes),
        removed_objects=removed,
        freed_bytes=freed,
        unchanged=kept,
    )


def inputs_digest(store: ContentStore, manifest: pd.DataFrame, dict_digest: str, level: int) -> str:
    """What an update of ``store`` depends on, as 32 hex digits: the present files' unique blake3 keys, the
    dictionary and level, and each pin's name, size and mtime (garbage collection's roots). An index whose
    footer holds the same digest was made from them, every object written and garbage collected after it,
    so :func:`update_store` keeps it as it is: at 100,000 files that skips a stat of every object and a walk
    of the objects' directories. An object removed behind the store's back is then found by the sampled
    round-trip check, not rewritten."""
    from nova_pipeline.core.ingest.manifest import present_files

    h = blake3.blake3(f"{dict_digest}\0{level}\0".encode())
    h.update("\n".join(sorted(set(present_files(manifest)["blake3"].tolist()))).encode())
    if has_pins := store.pins_dir.exists():
        for name in store.pins():
            with contextlib.suppress(FileNotFoundError):
                st = (store.pins_dir / f"{name}.parquet").stat()
                h.update(f"\0{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    h.update(b"\0pins" if has_pins else b"\0no pins")
    return h.hexdigest()[:32]

"""Resource zones of the backup store (seed 004): where a backup of CURRENT can live.

Green under 100,000 chunks, yellow to 500,000, red above. The memory a backup needs is estimated from the
real collection's cost per chunk (the golden export's uncompressed id and embedding bytes over its
vectors, times :data:`CHROMA_MEMORY_FACTOR`, plus :data:`CHROMA_FIXED_BYTES`), with the seed's safety
buffer: 2x the estimate + 500 MB must be available. Red, or not enough memory, or over ``max_memory_mb``:
the on-disk runtime copy. Where that cannot be had either: a refusal that says why.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUFFER_BYTES",
    "CHROMA_FIXED_BYTES",
    "CHROMA_MEMORY_FACTOR",
    "DISK",
    "GREEN",
    "GREEN_MAX_CHUNKS",
    "MEMORY",
    "RED",
    "SEED_BYTES_PER_CHUNK",
    "YELLOW",
    "YELLOW_MAX_CHUNKS",
    "Estimate",
    "estimate",
    "estimate_for_version",
    "export_vector_bytes",
]

MEMORY, DISK = "memory", "disk"

GREEN, YELLOW, RED = "green", "yellow", "red"

GREEN_MAX_CHUNKS, YELLOW_MAX_CHUNKS = 100_000, 500_000  # seed 004's zones

SEED_BYTES_PER_CHUNK = 5 * 1024  # seed 004's guess, kept only for comparison

BUFFER_BYTES = 500 * 2**20  # seed 004: "2x estimated + 500MB"

# The in-memory backup store holds slim records (vector, path, language, bucket): its memory grows by
# 1.6-1.8x the export's uncompressed id and embedding bytes per chunk (2,678 and 2,990 B measured in two
# runs against 1,639 B, on 10,354 stdlib chunks: each vector is held in the embeddings log and in the HNSW
# graph, beside the slim metadata rows), on top of about 32 MB for the store itself; 1.9 covers both.
# Measured by benchmarks/bench_scaleout.py --free-embedder and benchmarks/bench_failover.py (RSS of
# loading half, then all, of a golden export; chromadb 1.5), which print them again on every run. Full
# records (the document and its trigram index too) measured 3x the whole export's bytes.
CHROMA_MEMORY_FACTOR = 1.9

CHROMA_FIXED_BYTES = 32 * 2**20


@dataclass
class Estimate:
    """What a backup store of ``chunks`` vectors needs, and where it can live. Bytes are bytes."""

    chunks: int
    bytes_per_chunk: float
    estimate_bytes: int
    required_bytes: int
    available_bytes: int
    max_memory_bytes: int
    zone: str
    choice: str  # memory, disk or refuse
    message: str

    def as_metadata(self) -> dict:
        return {
            "zone": self.zone,
            "chunks": self.chunks,
            "bytes_per_chunk": round(self.bytes_per_chunk),
            "estimate_mb": round(self.estimate_bytes / 2**20, 1),
            "required_mb": round(self.required_bytes / 2**20, 1),
            "available_mb": round(self.available_bytes / 2**20, 1),
            "choice": self.choice,
        }


def _zone_of(chunks: int) -> str:
    """Seed 004's zones: green below 100,000 chunks, yellow to 500,000, red above."""
    return GREEN if chunks < GREEN_MAX_CHUNKS else YELLOW if chunks <= YELLOW_MAX_CHUNKS else RED


def _mb(n: int) -> str:
    """Bytes as MB (2^20 bytes), one decimal: the unit of every memory number (``backup_required_mb``)."""
    return f"{n / 2**20:,.1f} MB"


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f}GB"


def estimate(
    chunks: int,
    export_bytes: int,
    available_bytes: int | None = None,
    max_memory_mb: int = 2048,
    disk_copy: bool = True,
) -> Estimate:
    """Where a backup store of ``chunks`` vectors can live.

    Args:
        chunks: vectors in the store.
        export_bytes: the golden export's uncompressed ids and vectors (:func:`export_vector_bytes`); the
            cost per
            chunk is ``export_bytes / chunks * CHROMA_MEMORY_FACTOR``, and the estimate adds
            ``CHROMA_FIXED_BYTES``.
        available_bytes: free memory (default: psutil's ``virtual_memory().available``).
        max_memory_mb: the cap on an in-memory backup.
        disk_copy: whether the on-disk runtime copy can serve (it exists or can be built).

    Returns:
        ``choice`` is ``memory`` (green or yellow zone, 2x the estimate + 500 MB available, estimate under
        the cap), else ``disk`` when ``disk_copy``, else ``refuse`` with seed 004's message.
    """
    import psutil

    if available_bytes is None:
        available_bytes = psutil.virtual_memory().available
    per_chunk = export_bytes / chunks * CHROMA_MEMORY_FACTOR if chunks else 0.0
    est = int(per_chunk * chunks) + CHROMA_FIXED_BYTES
    required = 2 * est + BUFFER_BYTES
    cap = max_memory_mb * 2**20
    zone = _zone_of(chunks)
    fits = zone != RED and required <= available_bytes and est <= cap
    if fits:
        choice, message = (
            MEMORY,
            (
                f"Backup memory: needs {_mb(required)} ({_mb(est)} estimated x2 + 500 MB, {chunks:,} "
                f"chunks), available: {_mb(available_bytes)}, zone: {zone}: in memory"
            ),
        )
    elif disk_copy:
        why = (
            "red zone"
            if zone == RED
            else f"over max_memory_mb={max_memory_mb}"
            if est > cap
            else f"{_mb(available_bytes)} available"
        )
        choice, message = (
            DISK,
            f"Backup memory: needs {_mb(required)} ({why}; zone: {zone}, {chunks:,} chunks): from the "
            "on-disk runtime copy",
        )
    else:
        choice = "refuse"
        message = (
            f"BACKUP ACTIVATION FAILED - Insufficient memory. Required: {_gb(required)}, Available: "
            f"{_gb(available_bytes)}. No on-disk runtime copy either. To enable backup mode: free memory "
            f"(need {_gb(required)}, have {_gb(available_bytes)}); run the rebuild job so that golden_copy "
            f"makes the runtime copy; index a subset of the tree; or raise NOVA_BACKUP_MAX_MEMORY_MB "
            f"(now {max_memory_mb})."
        )
    return Estimate(
        chunks=chunks,
        bytes_per_chunk=per_chunk,
        estimate_bytes=est,
        required_bytes=required,
        available_bytes=available_bytes,
        max_memory_bytes=cap,
        zone=zone,
        choice=choice,
        message=message,
    )


def estimate_for_version(
    version, available_bytes: int | None = None, max_memory_mb: int = 2048, disk_copy: bool = True
) -> Estimate:
    """:func:`estimate` for a golden version: its vector count and :func:`export_vector_bytes` of its
    export."""

    from nova_pipeline.core.protect.golden.export import export_files

    return estimate(
        version.count,
        export_vector_bytes(export_files(version.path)),
        available_bytes,
        max_memory_mb,
        disk_copy,
    )


def export_vector_bytes(files) -> int:
    """The uncompressed bytes of an export's ``id`` and ``embedding`` columns: what an in-memory backup store
    holds of each chunk besides the few bytes of its slim metadata (its texts are read from the golden
    lexical index). From the Parquet footers, without reading the data."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            for c in range(rg.num_columns):
                col = rg.column(c)
                if col.path_in_schema.split(".")[0] in ("id", "embedding"):
                    total += col.total_uncompressed_size
    return total

"""Resource zones of the backup store (seed 004): where a backup of CURRENT can live.

Green under 100,000 chunks, yellow to 500,000, red above. The memory a backup needs is estimated from the
real collection's cost per chunk (the golden export's uncompressed bytes over its vectors, times
:data:`CHROMA_MEMORY_FACTOR`, plus :data:`CHROMA_FIXED_BYTES`), with the seed's safety buffer: 2x the
estimate + 500 MB must be available. Red, or not enough memory, or over ``max_memory_mb``: the on-disk
runtime copy. Where that cannot be had either: a refusal that says why.
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
]

MEMORY, DISK = "memory", "disk"

GREEN, YELLOW, RED = "green", "yellow", "red"

GREEN_MAX_CHUNKS, YELLOW_MAX_CHUNKS = 100_000, 500_000  # seed 004's zones

SEED_BYTES_PER_CHUNK = 5 * 1024  # seed 004's guess, kept only for comparison

BUFFER_BYTES = 500 * 2**20  # seed 004: "2x estimated + 500MB"

# An in-memory Chroma store holds each vector several times (the embeddings queue, the HNSW graph) and each
# document twice (the row and the trigram full-text index): its memory grows by about 3x the export's
# uncompressed bytes per chunk, on top of about 32 MB for the store itself. Both measured by
# benchmarks/bench_failover.py (RSS of loading half, then all, of a golden export; chromadb 1.5), which
# prints them again on every run.
CHROMA_MEMORY_FACTOR = 3.0

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
        export_bytes: the golden export's uncompressed size (vectors, documents, metadata); the cost per
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
    """:func:`estimate` for a golden version: its vector count and its export's uncompressed bytes (from the
    Parquet footers, without reading the data)."""
    import pyarrow.parquet as pq

    from nova_pipeline.core.protect.golden.export import export_files

    export_bytes = 0
    for f in export_files(version.path):
        meta = pq.ParquetFile(f).metadata
        export_bytes += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return estimate(version.count, export_bytes, available_bytes, max_memory_mb, disk_copy)

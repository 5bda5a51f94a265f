"""DataFrame tables (manifests, patterns, chunks) kept as Parquet under ``NOVA_HOME/tables``.

Each table is one file, written atomically (see :mod:`nova_pipeline.core.atomic`), so a reader sees the
last committed version or nothing. :data:`TABLES` are the only table names: a DataFrame asset's table is
named by its asset key (:mod:`nova_pipeline.core.keys`; the IO manager writes it).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nova_pipeline.core.atomic import atomic_write_with
from nova_pipeline.core.errors import TableNotMaterializedError
from nova_pipeline.core.keys import FREQUENT_PATTERNS, SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.layout import Layout

SOURCE_FILES_BINARIES = "source_files_binaries"  # binary files seen by the scan, so they are not read again
__all__ = [
    "CODE_NAMES",
    "CODE_RELATIONS",
    "CODE_SYMBOLS",
    "SOURCE_FILES_BINARIES",
    "TABLES",
    "identity",
    "read_rows",
    "read_table",
    "require_table",
    "table_path",
    "write_table",
    "FREQUENT_PATTERNS",
    "SOURCE_CHUNKS",
    "SOURCE_FILES",
]
# the code graph's tables (core/index/graph.py; the code_graph asset writes all three)
CODE_SYMBOLS, CODE_RELATIONS, CODE_NAMES = "code_symbols", "code_relations", "code_names"
TABLES = (
    SOURCE_FILES,
    SOURCE_FILES_BINARIES,
    FREQUENT_PATTERNS,
    SOURCE_CHUNKS,
    CODE_SYMBOLS,
    CODE_RELATIONS,
    CODE_NAMES,
)


def table_path(home: Path | Layout, name: str) -> Path:
    """Path of the Parquet file of table ``name``."""
    return Layout.of(home).table(name)


def identity(home: Path | Layout, name: str) -> str | None:
    """``"inode:size:mtime_ns"`` of table ``name``'s file, or None if it was never written.

    Tables are only ever replaced whole, by an atomic rename (:func:`write_table`), so each write gives the
    file a new identity: two equal identities mean the same committed version. A reader uses it to tell that
    a table is still the one a materialization wrote, without reading it.
    """
    try:
        st = table_path(home, name).stat()
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def write_table(home: Path | Layout, name: str, df: pd.DataFrame) -> Path:
    """Write ``df`` as table ``name`` atomically and return its path.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); the previous version stays in place.
    """
    path = table_path(home, name)
    atomic_write_with(path, lambda fh: df.to_parquet(fh, index=False))
    return path


def read_table(home: Path | Layout, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    """The last committed version of table ``name`` (only ``columns``, when given), or ``None`` if it was
    never written."""
    path = table_path(home, name)
    if not path.exists():
        return None
    return pd.read_parquet(path, columns=columns)


def require_table(home: Path | Layout, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The last committed version of table ``name`` (only ``columns``, when given): what a downstream asset
    reads of its upstream asset.

    Raises:
        TableNotMaterializedError: the table was never written; the message names it and the job to run.
    """
    df = read_table(home, name, columns)
    if df is None:
        raise TableNotMaterializedError(
            f"table {name} has not been materialized ({Layout.of(home).table(name).name} is missing under "
            "NOVA_HOME/tables): run the rebuild job"
        )
    return df


def read_rows(
    home: Path | Layout, name: str, key: str, values: list, columns: list[str] | None = None
) -> pd.DataFrame | None:
    """The rows of table ``name`` whose ``key`` is in ``values`` (only ``columns``, when given), or ``None``
    if the table was never written. Arrow evaluates the filter while it reads, so the rows left out are never
    turned into Python objects (the texts of 50 chunks out of 300,000 without a DataFrame of them all)."""
    import pyarrow.parquet as pq

    path = table_path(home, name)
    if not path.exists():
        return None
    return pq.read_table(path, columns=columns, filters=[(key, "in", list(values))]).to_pandas()

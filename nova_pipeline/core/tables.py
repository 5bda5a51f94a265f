"""DataFrame tables (manifests, patterns, chunks) kept as Parquet under ``NOVA_HOME/tables``.

Each table is one file, written atomically (see :mod:`nova_pipeline.core.atomic`), so a reader sees the
last committed version or nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nova_pipeline.core.atomic import atomic_write_with

TABLES_DIR = "tables"


def table_path(home: Path, name: str) -> Path:
    """Path of the Parquet file of table ``name``."""
    return Path(home) / TABLES_DIR / f"{name}.parquet"


def write_table(home: Path, name: str, df: pd.DataFrame) -> Path:
    """Write ``df`` as table ``name`` atomically and return its path.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); the previous version stays in place.
    """
    path = table_path(home, name)
    atomic_write_with(path, lambda fh: df.to_parquet(fh, index=False))
    return path


def read_table(home: Path, name: str) -> pd.DataFrame | None:
    """The last committed version of table ``name``, or ``None`` if it was never written."""
    path = table_path(home, name)
    if not path.exists():
        return None
    return pd.read_parquet(path)

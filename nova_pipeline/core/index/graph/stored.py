"""The code graph's three tables as written, with what made them kept in their Parquet footers.

Each of ``code_symbols``, ``code_relations`` and ``code_names`` carries the same attributes
(:func:`~nova_pipeline.core.tables.table_attrs`): the graph version, the digest of the inputs it was built
from (:func:`~nova_pipeline.core.index.graph.build.inputs_digest`) and the files it holds. The three are
written one after another, so a run killed between two writes leaves tables of two builds; their
attributes then differ, and the next build parses every file rather than keep rows from both.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nova_pipeline.core.index.graph.build import GRAPH_VERSION, TABLES
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.tables import table_attrs, write_table

__all__ = ["MIXED", "kept_attrs", "write_tables"]

MIXED = "mixed"  # kept_attrs' graph_version for tables of different builds: no version matches it


def write_tables(home: Path | Layout, tables: tuple[pd.DataFrame, ...], digest: str, files: int) -> None:
    """Write ``(code_symbols, code_relations, code_names)`` under ``home``, each atomically, with the
    attributes ``graph_version`` (:data:`GRAPH_VERSION`), ``inputs_digest`` (``digest``) and ``files`` (the
    files whose facts they hold, parsed or reused).

    Raises:
        OSError: a write failed; the tables written before it are a newer build than the rest, which
            :func:`kept_attrs` reports as :data:`MIXED`.
    """
    attrs = {"graph_version": GRAPH_VERSION, "inputs_digest": digest, "files": str(files)}
    for name, table in zip(TABLES, tables, strict=True):
        write_table(home, name, table, attrs=attrs)


def kept_attrs(home: Path | Layout) -> dict[str, str] | None:
    """What made the code graph's tables under ``home``, from their footers: None when one is missing, ``{}``
    when none says (tables written before their footers held it), the three's common attributes when they
    agree, else ``{"graph_version": MIXED}`` (tables of two builds: a kill between the writes)."""
    found = [table_attrs(home, name) for name in TABLES]
    if any(a is None for a in found):
        return None
    if not any(found):
        return {}
    if any(a != found[0] for a in found[1:]):
        return {"graph_version": MIXED}
    return found[0]

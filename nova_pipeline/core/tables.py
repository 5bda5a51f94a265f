"""DataFrame tables (manifests, patterns, chunks) kept as Parquet under ``NOVA_HOME/tables``.

Each table is one file, written atomically (see :mod:`nova_pipeline.core.atomic`), so a reader sees the
last committed version or nothing. :data:`TABLES` are the only table names: a DataFrame asset's table is
named by its asset key (:mod:`nova_pipeline.core.keys`; the IO manager writes it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nova_pipeline.core.atomic import atomic_write_bytes, atomic_write_with
from nova_pipeline.core.errors import TableNotMaterializedError
from nova_pipeline.core.keys import FREQUENT_PATTERNS, SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.layout import Layout

SOURCE_FILES_BINARIES = "source_files_binaries"  # binary files seen by the scan, so they are not read again
__all__ = [
    "CODE_NAMES",
    "CODE_RELATIONS",
    "CODE_SYMBOLS",
    "CONTIGUOUS",
    "SOURCE_FILES_BINARIES",
    "TABLES",
    "file_identity",
    "identity",
    "in_order",
    "in_set",
    "joined_keys",
    "memo",
    "one_chunk",
    "parquet_attrs",
    "read_rows",
    "replace_at",
    "table_attrs",
    "row_count",
    "read_table",
    "require_table",
    "table_path",
    "write_table",
    "write_parquet",
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


# Rows per Parquet row group. Each group keeps min/max statistics per column, so a read filtered on a
# sorted column (the chunks table is sorted by path) skips the groups that cannot hold a match: the texts
# of 105 chunks of 3 files out of 342,997 took 19 ms with groups of 4,096 rows, 46 ms with 16,384, and
# 501 ms with pyarrow's default (one group here); a whole read also got faster (305 against 758 ms).
ROW_GROUP_ROWS = 4096


def table_path(home: Path | Layout, name: str) -> Path:
    """Path of the Parquet file of table ``name``."""
    return Layout.of(home).table(name)


def identity(home: Path | Layout, name: str) -> str | None:
    """``"inode:size:mtime_ns"`` of table ``name``'s file, or None if it was never written.

    Tables are only ever replaced whole, by an atomic rename (:func:`write_table`), so each write gives the
    file a new identity: two equal identities mean the same committed version. A reader uses it to tell that
    a table is still the one a materialization wrote, without reading it.
    """
    return file_identity(table_path(home, name))


def file_identity(path: Path) -> str | None:
    """``"inode:size:mtime_ns"`` of a file that is only ever replaced whole (see :func:`identity`), or None
    if it is missing."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def memo(home: Path | Layout, name: str, kind: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, a value derived from table ``name`` alone (a digest, its ids' digest), computed once per
    version of the table: kept beside it in ``<name>.memo.json`` under the table's :func:`identity`.

    An unchanged rebuild asks several assets' questions of the same table (its chunk ids' digest, its
    lexical digest, its shard digests); each answer used to cost a read of the table and a pass over every
    row, at every run. A new version of the table (a new identity) makes every kept answer stale. The value
    is kept only if the table did not change while it was computed. ``compute``'s value must be JSON
    (``kind`` names the question and everything else it depends on, e.g. the model fingerprint). A memo that
    cannot be read or written costs only the computation.
    """
    path = table_path(home, name)
    held = identity(home, name)
    memo_path = path.with_suffix(".memo.json")
    kept: dict = {}
    if held is not None:
        try:
            kept = json.loads(memo_path.read_bytes())
        except (OSError, ValueError):
            kept = {}
        if not isinstance(kept, dict) or kept.get("identity") != held:
            kept = {"identity": held, "values": {}}
        values = kept.get("values")
        if isinstance(values, dict) and kind in values:
            return values[kind]
    value = compute()
    if held is not None and identity(home, name) == held:
        kept.setdefault("values", {})[kind] = value
        try:
            atomic_write_bytes(memo_path, json.dumps(kept).encode())
        except OSError:
            pass  # the next run computes it again
    return value


def in_set(column: pd.Series, values) -> np.ndarray:
    """Per row of ``column``, whether its value is in ``values`` (a set, or any iterable): a bool array of
    ``len(column)``.

    pandas' own ``isin`` on an Arrow-backed string column costs about 10 µs per value of ``values`` (measured
    with pandas 3.1 on 98,777 chunk ids: 1.04 s for a set of them all), which made reconcile, the plan and
    the golden copy pay a second per 100,000 chunks for a one-file edit; a hash lookup per row takes 0.055 s
    for the same ids. Small value lists go to ``isin`` (a few ms)."""
    if not isinstance(values, (set, frozenset, dict)):
        values = set(values)
    if len(values) <= 64:
        return column.isin(values).to_numpy(dtype=bool, na_value=False)
    return np.fromiter((v in values for v in column.tolist()), dtype=bool, count=len(column))


def row_count(home: Path | Layout, name: str) -> int | None:
    """The rows of table ``name``, from its Parquet footer (nothing else is read); None if never written."""
    import pyarrow.parquet as pq

    path = table_path(home, name)
    if not path.exists():
        return None
    return pq.ParquetFile(path).metadata.num_rows


ATTRS_KEY = b"nova.attrs"  # the Parquet footer's key-value entry that holds a table's attributes


def write_table(
    home: Path | Layout, name: str, df: pd.DataFrame, attrs: dict[str, str] | None = None
) -> Path:
    """Write ``df`` as table ``name`` atomically and return its path.

    ``attrs`` (default: ``df.attrs``, pandas' dataset attributes, which is how an asset's value hands them to
    the IO manager): string attributes kept in the file's Parquet footer under :data:`ATTRS_KEY`, read back
    by :func:`table_attrs`. They say what made this version of the table (the chunker's version, the digest
    of the code graph's inputs), so the answer travels with the data: a new Dagster instance, a table put
    back from the golden copy or written by ``nova watch`` is judged by what it holds, not by a run
    storage's memory of an earlier write.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); the previous version stays in place.
    """
    path = table_path(home, name)
    write_parquet(path, df, df.attrs if attrs is None else attrs)
    return path


def write_parquet(path: Path, df: pd.DataFrame, attrs: dict[str, str] | None = None) -> None:
    """Write ``df`` to ``path`` atomically, with string ``attrs`` in its footer under :data:`ATTRS_KEY` (read
    back by :func:`parquet_attrs`; none: the footer has no entry).

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); the previous file stays in place.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not attrs:
        atomic_write_with(path, lambda fh: df.to_parquet(fh, index=False, row_group_size=ROW_GROUP_ROWS))
        return
    table = pa.Table.from_pandas(df, preserve_index=False)  # what to_parquet writes, with the attributes
    footer = {**(table.schema.metadata or {}), ATTRS_KEY: json.dumps(dict(attrs), sort_keys=True).encode()}
    table = table.replace_schema_metadata(footer)
    atomic_write_with(path, lambda fh: pq.write_table(table, fh, row_group_size=ROW_GROUP_ROWS))


def table_attrs(home: Path | Layout, name: str) -> dict[str, str] | None:
    """The attributes :func:`write_table` kept in table ``name``'s footer (only the footer is read): ``{}``
    for a table written without them (or whose entry does not parse), None when the table was never
    written."""
    return parquet_attrs(table_path(home, name))


def parquet_attrs(path: Path) -> dict[str, str] | None:
    """The attributes :func:`write_parquet` kept in ``path``'s footer (only the footer is read): ``{}`` for a
    file written without them, whose entry does not parse, or that is not Parquet; None when there is no
    file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        footer = pq.read_schema(path).metadata or {}
    except FileNotFoundError:
        return None
    except pa.ArrowInvalid:  # not a Parquet file: whoever reads it says so
        return {}
    try:
        attrs = json.loads(footer.get(ATTRS_KEY, b"{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in attrs.items()} if isinstance(attrs, dict) else {}


def read_table(home: Path | Layout, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    """The last committed version of table ``name`` (only ``columns``, when given), or ``None`` if it was
    never written. A table of :data:`CONTIGUOUS` is read into one chunk per column (:func:`one_chunk`)."""
    table = read_arrow(home, name, columns)
    if table is None:
        return None
    return (one_chunk(table) if name in CONTIGUOUS else table).to_pandas()


def read_arrow(home: Path | Layout, name: str, columns: list[str] | None = None):
    """The last committed version of table ``name`` as a ``pyarrow.Table`` (one chunk per row group; only
    ``columns``, when given), or ``None`` if it was never written: for a reader that filters rows before
    pandas sees them."""
    import pyarrow.parquet as pq

    path = table_path(home, name)
    if not path.exists():
        return None
    return pq.read_table(path, columns=columns)


# Tables read into one chunk per column (:func:`one_chunk`): those whose rows are then selected several
# times (the chunks table: by the chunking, reconcile, the checks and the golden copy; the manifest). The
# code graph's tables are filtered once after they are read, and concatenating costs more than it saves
# there (code_relations at 10,000 files: read 1.2 s, 2.8 s contiguous; one mask 0.86 s, 0.23 s).
CONTIGUOUS = frozenset({SOURCE_CHUNKS, SOURCE_FILES})


def one_chunk(table):
    """``table`` (a ``pyarrow.Table``) with each column in one contiguous chunk, as a table read from Parquet
    has one chunk per row group (:data:`ROW_GROUP_ROWS`).

    pandas keeps a string column Arrow-backed, chunks and all, and a row selection (a mask, ``iloc``) on a
    chunked column concatenates its chunks first, each time: measured on the 98,777-row chunks table, a mask
    took 183 ms over 25 chunks and 21 ms over one. Concatenating once when the table is read costs about one
    such selection. A column of 1 GiB or more stays chunked (a string array's 32-bit offsets end at 2 GiB)."""
    import pyarrow as pa

    cols = [c.combine_chunks() if c.num_chunks > 1 and c.nbytes < 2**30 else c for c in table.columns]
    return pa.Table.from_arrays(cols, schema=table.schema)


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
    home: Path | Layout,
    name: str,
    key: str,
    values: list,
    columns: list[str] | None = None,
    paths: Iterable[str] | None = None,
) -> pd.DataFrame | None:
    """The rows of table ``name`` whose ``key`` is in ``values`` (only ``columns``, when given), or ``None``
    if the table was never written. Arrow evaluates the filter while it reads, so the rows left out are never
    turned into Python objects (the texts of 50 chunks out of 300,000 without a DataFrame of them all).

    ``paths``: the ``path`` values those rows have, when the caller knows them. The chunks table is sorted
    by path, so the row groups (:data:`ROW_GROUP_ROWS`) of other paths are skipped by their statistics
    without being decoded."""
    import pyarrow.parquet as pq

    path = table_path(home, name)
    if not path.exists():
        return None
    filters = [(key, "in", list(values))]
    if paths is not None:
        filters.insert(0, ("path", "in", sorted(set(paths))))
    return one_chunk(pq.read_table(path, columns=columns, filters=filters)).to_pandas()


def _runs_kept(n: int, drop: np.ndarray) -> list[tuple[int, int]]:
    """The ``[start, stop)`` runs of the ``n`` rows where ``drop`` is False (where the padded keep mask
    rises and falls)."""
    edges = np.flatnonzero(np.diff(np.r_[0, ~np.asarray(drop, dtype=bool), 0].astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def drop_runs(table, drop: np.ndarray):
    """``table`` (a ``pyarrow.Table``) without the rows where ``drop`` (a bool array of its length) is True,
    as zero-copy slices between the dropped runs, joined (:func:`pyarrow.concat_tables`).

    For a table whose rows of one file lie together (each file's rows are written as one run), dropping a
    few files' rows is a few slices: an Arrow filter copies every kept string (1.05 s for the 1.3 million
    rows of ``code_relations`` at 10,000 files), a pandas mask over Arrow-backed columns more (2.3 s for the
    code graph's three tables); the slices cost 0.03 s."""
    import pyarrow as pa

    if not drop.any():
        return table
    pieces = [table.slice(a, b - a) for a, b in _runs_kept(table.num_rows, drop)]
    return pa.concat_tables(pieces) if pieces else table.slice(0, 0)


def joined_keys(first: pd.Series, second: pd.Series):
    """``first NUL second`` per row (e.g. ``path NUL blake3``), as an Arrow string array: for vectorised set
    membership (``pyarrow.compute.is_in``) over pairs of columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(
        pa.array(first.astype(str).to_numpy(dtype=object), pa.string()),  # typed: an empty array is no null
        pa.array(second.astype(str).to_numpy(dtype=object), pa.string()),
        "\0",
    )


def in_order(df: pd.DataFrame, key: str, then: str) -> bool:
    """Whether ``df``'s rows are sorted by string column ``key``, then strictly by integer column ``then``
    (compared by Arrow, with no Python string per row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(df) < 2:
        return True
    keys, nums = pa.chunked_array(pa.array(df[key])), pa.array(df[then].to_numpy())
    same = pc.equal(keys[1:], keys[:-1])
    back = pc.or_(pc.less(keys[1:], keys[:-1]), pc.and_(same, pc.less_equal(nums[1:], nums[:-1])))
    return not pc.any(back).as_py()


def splice_sorted(
    previous: pd.DataFrame, drop: np.ndarray, fresh: pd.DataFrame, by: list[str]
) -> pd.DataFrame | None:
    """``previous`` (sorted by ``by``) without the rows where ``drop`` is True, and with ``fresh``'s rows
    placed in order: the table a sort of the two would give, made of slices of both (an Arrow-backed
    column's slices are joined without copying its strings). A mask over the 342,997-row chunks table with
    its texts took 0.9 s, and the sort 0.2 s.

    ``fresh``'s values of ``by[0]`` (a file's path) must be absent from the kept rows, as a changed file's
    rows are all replaced. Returns None when they are not, or the kept rows are not sorted by ``by[0]``:
    the caller sorts then."""
    runs = _runs_kept(len(previous), drop)
    parts = [previous.iloc[a:b] for a, b in runs]
    if len(parts) == 1:
        kept = parts[0].reset_index(drop=True)
    else:
        kept = pd.concat(parts, ignore_index=True) if parts else previous.iloc[:0]
    key = kept[by[0]].to_numpy(dtype=object)
    if len(key) > 1 and not bool((key[1:] >= key[:-1]).all()):
        return None
    fresh = fresh.sort_values(by, ignore_index=True)
    heads = fresh[by[0]].to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, heads[1:] != heads[:-1]]) if len(heads) else np.zeros(0, int)
    at = np.searchsorted(key, heads[starts], side="left").tolist() if len(starts) else []
    if any(p < len(key) and key[p] == h for p, h in zip(at, heads[starts].tolist())):
        return None
    pieces, done = [], 0
    for i, pos in enumerate(at):
        if pos > done:
            pieces.append(kept.iloc[done:pos])
        pieces.append(fresh.iloc[starts[i] : starts[i + 1] if i + 1 < len(starts) else len(fresh)])
        done = pos
    if done < len(kept):
        pieces.append(kept.iloc[done:])
    pieces = [p for p in pieces if len(p)]
    return pd.concat(pieces, ignore_index=True) if pieces else kept.iloc[:0]


def replace_at(column, *at_values: tuple[np.ndarray, list | np.ndarray]):
    """``column`` (a ``pyarrow.Array``) with the values at some positions replaced: each of ``at_values`` is
    ``(positions, their values)``, positions ascending and disjoint between them. Done by Arrow's kernel
    (``replace_with_mask``): the column never becomes Python values. For the code graph's three resolved
    columns at 10,000 files, turning 1.3 million rows of each into Python strings and back took 1.8 s of a
    one-file edit's 7.7 s."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = np.zeros(len(column), dtype=bool)
    at = np.concatenate([np.asarray(a, dtype=np.int64) for a, _ in at_values])
    if not len(at):
        return column
    mask[at] = True
    values = np.concatenate([np.asarray(v, dtype=object) for _, v in at_values])[
        np.argsort(at, kind="stable")
    ]
    return pc.replace_with_mask(column, pa.array(mask), pa.array(values, column.type))

"""Tables: identities and the answers kept per version of a table."""

import numpy as np
import pandas as pd
import pyarrow as pa

from nova_pipeline.core.tables import (
    identity,
    in_set,
    memo,
    read_table,
    replace_at,
    row_count,
    table_attrs,
    table_path,
    write_table,
)


def test_a_memo_is_computed_once_per_version_of_its_table(tmp_path):
    calls = []

    def ids_sum():
        calls.append(1)
        return int(pd.read_parquet(table_path(tmp_path, "source_chunks"))["n"].sum())

    assert memo(tmp_path, "source_chunks", "sum", lambda: 0) == 0  # no table: computed, not kept
    assert memo(tmp_path, "source_chunks", "sum", lambda: 7) == 7
    write_table(tmp_path, "source_chunks", pd.DataFrame({"n": [1, 2, 3]}))
    assert row_count(tmp_path, "source_chunks") == 3
    calls.clear()
    assert [memo(tmp_path, "source_chunks", "sum", ids_sum) for _ in range(3)] == [6, 6, 6]
    assert len(calls) == 1
    assert memo(tmp_path, "source_chunks", "other", lambda: "x") == "x"  # kinds are kept side by side
    assert memo(tmp_path, "source_chunks", "sum", ids_sum) == 6 and len(calls) == 1
    before = identity(tmp_path, "source_chunks")
    write_table(tmp_path, "source_chunks", pd.DataFrame({"n": [1, 2, 3]}))  # a new version, same rows
    assert identity(tmp_path, "source_chunks") != before
    assert memo(tmp_path, "source_chunks", "sum", ids_sum) == 6 and len(calls) == 2
    write_table(tmp_path, "source_chunks", pd.DataFrame({"n": [10]}))
    assert memo(tmp_path, "source_chunks", "sum", ids_sum) == 10 and len(calls) == 3


def test_an_answer_computed_while_the_table_changed_is_not_kept_and_a_broken_memo_is_recomputed(tmp_path):
    write_table(tmp_path, "t", pd.DataFrame({"n": [1]}))

    def racing():
        write_table(tmp_path, "t", pd.DataFrame({"n": [2]}))  # another writer, mid-computation
        return "answer for the old version"

    assert memo(tmp_path, "t", "k", racing) == "answer for the old version"
    assert memo(tmp_path, "t", "k", lambda: "fresh") == "fresh"  # the racing answer was not kept
    memo_file = table_path(tmp_path, "t").with_suffix(".memo.json")
    memo_file.write_bytes(b"{not json")
    assert memo(tmp_path, "t", "k", lambda: "again") == "again"
    assert memo(tmp_path, "t", "k", lambda: "not called") == "again"


def test_in_set_agrees_with_isin_on_arrow_strings_for_small_and_large_value_sets(tmp_path):
    ids = [f"{i:08x}" for i in range(5_000)]
    write_table(tmp_path, "t", pd.DataFrame({"chunk_id": ids}))
    column = pd.read_parquet(table_path(tmp_path, "t"))["chunk_id"]  # Arrow-backed, as every table reads
    for values in (set(ids[::3]), ids[10:20], {"nope"}, set(), pd.Series(ids[4_000:])):
        got = in_set(column, values)
        assert got.dtype == bool and len(got) == len(column)
        assert got.tolist() == column.isin(list(values)).tolist()
    assert int(in_set(column, set(ids[::3])).sum()) == len(ids[::3])


def test_a_table_keeps_its_attributes_in_its_footer_and_its_rows_as_before(tmp_path):
    df = pd.DataFrame({"path": ["a.py", "b.py"], "n": [1, 2]})
    assert table_attrs(tmp_path, "source_chunks") is None  # never written
    write_table(tmp_path, "plain", df)
    assert table_attrs(tmp_path, "plain") == {}
    write_table(tmp_path, "given", df, attrs={"chunker": "2"})
    # pandas' dataset attributes: how an asset's value hands them to the IO manager
    df.attrs = {"chunker": "3"}
    write_table(tmp_path, "from_df", df)
    assert table_attrs(tmp_path, "given") == {"chunker": "2"}
    assert table_attrs(tmp_path, "from_df") == {"chunker": "3"}
    for name in ("given", "from_df"):  # the rows and their types are what a plain write gives
        pd.testing.assert_frame_equal(read_table(tmp_path, name), read_table(tmp_path, "plain"))
    table_path(tmp_path, "broken").write_bytes(b"not parquet")
    assert table_attrs(tmp_path, "broken") == {}  # unknown: whoever reads the table says what is wrong


def test_replace_at_puts_each_value_at_its_position_and_keeps_the_rest_nulls_included():
    column = pa.array(["a", "b", None, "d", "e", "f"], pa.large_string())
    got = replace_at(
        column, (np.array([1, 4]), ["B", "E"]), (np.array([0, 2]), np.array(["A", "C"], dtype=object))
    )
    assert got.type == pa.large_string()
    assert got.to_pylist() == ["A", "B", "C", "d", "E", "f"]
    assert replace_at(column, (np.array([3]), ["D"])).to_pylist() == ["a", "b", None, "D", "e", "f"]
    assert replace_at(column, (np.array([], dtype=np.int64), [])) is column  # nothing to replace: no copy

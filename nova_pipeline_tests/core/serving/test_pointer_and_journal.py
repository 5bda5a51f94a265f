"""The failover pointer (core/serving/pointer.py) and the write journal (core/serving/journal.py): what a
reader sees of a missing or damaged pointer, when a change is written, and a journal that is written ahead,
numbered, replayed in order and in batches."""

import json
import logging
import os

import numpy as np
import pytest

from nova_pipeline.core.serving import pointer
from nova_pipeline.core.serving.journal import Journal, JournalingCollection
from nova_pipeline.core.serving.pointer import (
    BACKUP,
    PRIMARY,
    FailoverState,
    read_state,
    set_breaker,
    state_path,
    update_state,
    write_state,
)


def test_a_pointer_never_written_is_the_primary_with_a_closed_breaker(tmp_path):
    s = read_state(tmp_path)
    assert s == FailoverState() and s.active == PRIMARY and s.breaker == "closed" and not s.failed_over
    assert s.recovered_from == "" and not state_path(tmp_path).exists()
    assert state_path(tmp_path) == tmp_path / "failover" / "state.json"


def test_a_write_is_read_back_whole_with_its_last_good_copy(tmp_path):
    written = write_state(tmp_path, FailoverState(active=BACKUP, reason="primary down", backup_version="v3"))
    assert written.updated_at and read_state(tmp_path) == written and read_state(tmp_path).failed_over
    path = state_path(tmp_path)
    good = path.with_name("state.json.good")
    assert good.read_bytes() == path.read_bytes()
    raw = json.loads(path.read_text())
    assert "recovered_from" not in raw and raw["active"] == "backup" and raw["backup_version"] == "v3"


@pytest.mark.parametrize(
    "damage",
    ["{half", "[]", '{"active": "elsewhere"}', '{"active": "backup", "breaker": 3, "extra": 1, "since": []}'],
)
def test_a_damaged_pointer_is_read_as_its_last_good_copy_and_logged(tmp_path, caplog, damage):
    good = write_state(tmp_path, FailoverState(active=BACKUP, reason="outage"))
    state_path(tmp_path).write_text(damage)
    with caplog.at_level(logging.ERROR, logger=pointer.__name__):
        s = read_state(tmp_path)
    if damage.startswith('{"active": "backup", "breaker": 3'):  # parses: unknown keys are dropped
        assert s.active == BACKUP and s.breaker == 3 and s.recovered_from == ""
        return
    assert s.active == BACKUP and s.reason == "outage" and s.updated_at == good.updated_at
    assert s.recovered_from.startswith("state.json is unreadable (")
    assert "using the last good copy state.json.good" in s.recovered_from
    assert any("failover pointer" in r.getMessage() for r in caplog.records)


def test_with_no_good_copy_either_the_primary_is_assumed(tmp_path, caplog):
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{half")
    with caplog.at_level(logging.ERROR, logger=pointer.__name__):
        s = read_state(tmp_path)
    assert s.active == PRIMARY and s.reason == "no readable pointer"
    assert "there is no readable state.json.good: assuming the primary" in s.recovered_from
    path.with_name("state.json.good").write_text('{"active": "sideways"}')
    assert read_state(tmp_path).reason == "no readable pointer"


def test_update_state_writes_only_a_change_but_always_repairs_a_damaged_pointer(tmp_path):
    write_state(tmp_path, FailoverState())
    path = state_path(tmp_path)
    stamp = path.stat().st_mtime_ns, path.read_bytes()
    s = update_state(tmp_path, lambda st: False)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == stamp and s == read_state(tmp_path)
    s = update_state(tmp_path, lambda st: setattr(st, "reason", "changed"))  # None: write
    assert read_state(tmp_path).reason == "changed" and s.reason == "changed"
    path.write_text("{half")
    repaired = update_state(tmp_path, lambda st: False)
    assert json.loads(path.read_text())["reason"] == "changed" and repaired.recovered_from == ""


def test_set_breaker_records_a_change_of_state_only(tmp_path):
    assert set_breaker(tmp_path, "closed") == FailoverState() and not state_path(tmp_path).exists()
    s = set_breaker(tmp_path, "open")
    assert s.breaker == "open" and read_state(tmp_path).breaker == "open"
    mtime = state_path(tmp_path).stat().st_mtime_ns
    set_breaker(tmp_path, "open")
    assert state_path(tmp_path).stat().st_mtime_ns == mtime


class Recorder:
    """A collection that records its writes and what the journal held when each arrived."""

    def __init__(self, journal=None):
        self.calls, self.journal = [], journal
        self.name = "chunks_x"

    def upsert(self, ids, embeddings, documents, metadatas):
        entries = len(list(self.journal.dir.glob("*.parquet"))) if self.journal else None
        self.calls.append(
            ("upsert", list(ids), np.asarray(embeddings).tolist(), documents, metadatas, entries)
        )

    def delete(self, ids):
        entries = len(list(self.journal.dir.glob("*.parquet"))) if self.journal else None
        self.calls.append(("delete", list(ids), entries))


def test_the_journal_is_numbered_and_replayed_in_order_and_in_batches(tmp_path):
    j = Journal(tmp_path)
    assert list(j.entries()) == [] and j.summary() == {"upserts": 0, "deletes": 0, "entries": 0}
    j.upsert(["a", "b", "c"], [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], ["A", "B", "C"], [{"p": 1}, {"p": 2}, {}])
    j.delete(["a"])
    j.upsert(["a"], [[0.25, 0.75]], ["A2"], [{"p": 3}])
    names = sorted(p.name for p in j.dir.iterdir())
    assert names == ["00000001-upsert.parquet", "00000002-delete.parquet", "00000003-upsert.parquet"]
    assert [(seq, op, t.num_rows) for seq, op, t in j.entries()] == [
        (1, "upsert", 3),
        (2, "delete", 1),
        (3, "upsert", 1),
    ]
    assert j.summary() == {"upserts": 4, "deletes": 1, "entries": 3}
    (j.dir / "00000002-delete.parquet").rename(j.dir / "00000010-delete.parquet")
    j.delete(["z"])
    assert (j.dir / "00000011-delete.parquet").exists()  # after the highest number, not the count

    col = Recorder()
    assert j.replay(col, batch=2) == (4, 2)
    assert [c[0] for c in col.calls] == ["upsert", "upsert", "upsert", "delete", "delete"]
    assert col.calls[0][1:5] == (["a", "b"], [[1.0, 0.0], [0.0, 1.0]], ["A", "B"], [{"p": 1}, {"p": 2}])
    assert col.calls[1][1] == ["c"] and col.calls[2][1:5] == (["a"], [[0.25, 0.75]], ["A2"], [{"p": 3}])
    assert col.calls[3][1] == ["a"] and col.calls[4][1] == ["z"]
    again = Recorder()
    assert j.replay(again) == (4, 2) and len(again.calls) == 4  # one call per entry at the default batch
    j.clear()
    assert not j.dir.exists() and list(j.entries()) == []
    j.clear()  # twice: nothing to do


def test_a_journaling_collection_writes_the_journal_before_the_store(tmp_path):
    j = Journal(tmp_path)
    inner = Recorder(j)
    first = []
    col = JournalingCollection(inner, j, on_first_write=lambda: first.append(True))
    col.upsert(["a"], [[1.0, 0.0]], ["A"], [{"p": 1}])
    col.delete(["a"])
    col.upsert(["b"], [[0.0, 1.0]], ["B"], [{}])
    assert [c[-1] for c in inner.calls] == [1, 2, 3]  # each entry on disk before its write arrived
    assert first == [True]  # the first write only
    assert col.name == "chunks_x"  # reads pass through
    assert os.path.isdir(j.dir) and j.summary() == {"upserts": 2, "deletes": 1, "entries": 3}


def test_what_a_pointer_file_may_leave_out_or_add(tmp_path, caplog):
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"breaker": "open"}')  # no "active": the primary
    s = read_state(tmp_path)
    assert s.active == PRIMARY and s.breaker == "open" and s.recovered_from == ""
    path.write_text('{"active": "backup", "recovered_from": "from the file", "unknown": 1}')
    s = read_state(tmp_path)
    assert s.active == BACKUP and s.recovered_from == ""  # never read from the file
    path.write_text('{"active": "sideways"}')
    with caplog.at_level(logging.ERROR, logger=pointer.__name__):
        s = read_state(tmp_path)
    assert "state.json is unreadable (_NotAState: not a failover state)" in s.recovered_from
    assert [r.getMessage() for r in caplog.records] == [f"failover pointer: {s.recovered_from}"]
    path.write_text("{half")
    assert "(JSONDecodeError: " in read_state(tmp_path).recovered_from


def test_times_are_utc_to_the_second(tmp_path):
    s = write_state(tmp_path, FailoverState())
    assert s.updated_at.endswith("+00:00") and len(s.updated_at) == len("2026-01-01T00:00:00+00:00")
    assert pointer.now_iso().endswith("+00:00")


def test_the_journal_lives_in_failover_journal_and_keeps_types_and_sorted_metadata(tmp_path):
    import pyarrow as pa

    j = Journal(tmp_path)
    assert j.dir == tmp_path / "failover" / "journal"
    j.upsert(["a"], np.array([[1.5, 2.5]], dtype=np.float64), ["A"], [{"b": 1, "a": 2}])
    j.delete(["a"])
    (_, _, up), (_, _, down) = list(j.entries())
    assert up.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    assert up.schema.field("id").type == pa.string() and up.schema.field("document").type == pa.string()
    assert up.column("metadata").to_pylist() == ['{"a": 2, "b": 1}']  # sorted keys: the same bytes each time
    assert down.schema.field("id").type == pa.string()


def test_replay_writes_batches_of_a_thousand_by_default(tmp_path):
    j = Journal(tmp_path)
    j.upsert([f"id{i}" for i in range(2500)], np.ones((2500, 2)), ["d"] * 2500, [{}] * 2500)
    col = Recorder()
    assert j.replay(col) == (2500, 0)
    assert [len(c[1]) for c in col.calls] == [1000, 1000, 500]


def test_a_journaling_collection_passes_each_write_on_whole(tmp_path):
    j = Journal(tmp_path)
    inner = Recorder(j)
    col = JournalingCollection(inner, j)  # no first-write hook: fine
    col.upsert(["a"], [[1.0, 0.0]], ["A"], [{"p": 1}])
    col.delete(["a"])
    assert inner.calls[0][:5] == ("upsert", ["a"], [[1.0, 0.0]], ["A"], [{"p": 1}])
    assert inner.calls[1][:2] == ("delete", ["a"])

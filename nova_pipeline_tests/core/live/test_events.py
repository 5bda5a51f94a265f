"""nova watch's file events (core/live/events): a write wakes a batch after the settle, a save's several
events are one batch, reads and refused paths wake nothing, a stop ends a wait at once, and the polling
observer sees what inotify sees."""

import os
import threading
import time

import pytest

from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.live.events import FileEvents


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True)
    (root / "ignored").mkdir()
    for i in range(5):
        (root / "pkg" / f"m{i}.py").write_text(f"x = {i}\n")
    return root


def keep(path: str) -> bool:
    return "/ignored" not in path


def test_a_save_by_write_then_rename_is_one_batch_and_reads_wake_nothing(tree):
    with FileEvents(str(tree), keep, settle_s=0.05) as events:
        target = tree / "pkg" / "m1.py"
        tmp = tree / "pkg" / ".m1.py.swp"
        t0 = time.monotonic()
        tmp.write_text("x = 'saved'\n")
        os.replace(tmp, target)
        batch = events.next(5)
        waited = time.monotonic() - t0
        assert str(target) in batch and str(tmp) in batch, batch
        assert waited >= 0.05  # the settle ended it, not the first event
        assert events.next(0.3) == []  # the rename was part of the same batch

        for path in (tree / "pkg").iterdir():  # what an update's scan does: open, read, close
            path.read_bytes()
        os.stat(target)
        (tree / "ignored" / "log.txt").write_text("refused by keep")
        assert events.next(0.3) == []


def test_events_during_a_batchs_work_are_the_next_batch_and_a_stop_wakes_a_wait(tree):
    with FileEvents(str(tree), keep, settle_s=0.02) as events:
        (tree / "pkg" / "m0.py").write_text("y = 0\n")
        first = events.next(5)
        for i in range(3):  # written while the caller applies the first batch
            (tree / "pkg" / f"new{i}.py").write_text(f"z = {i}\n")
        time.sleep(0.2)
        second = events.next(5)
        assert first == [str(tree / "pkg" / "m0.py")]
        assert {str(tree / "pkg" / f"new{i}.py") for i in range(3)} <= set(second)

        threading.Timer(0.2, events.wake).start()
        t0 = time.monotonic()
        assert events.next(30) == []
        assert time.monotonic() - t0 < 5


def test_a_batch_is_returned_after_max_batch_s_while_writes_go_on(tree):
    with FileEvents(str(tree), keep, settle_s=0.2, max_batch_s=0.5) as events:
        stop = threading.Event()

        def keep_writing():
            i = 0
            while not stop.is_set():
                (tree / "pkg" / "busy.py").write_text(f"n = {i}\n")
                i += 1
                time.sleep(0.05)  # always within the settle

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            t0 = time.monotonic()
            assert str(tree / "pkg" / "busy.py") in events.next(10)
            assert time.monotonic() - t0 < 3
        finally:
            stop.set()
            writer.join()


def test_the_polling_observer_sees_a_new_file_and_a_deletion(tree):
    with FileEvents(str(tree), keep, settle_s=0.05, force_polling=True, poll_s=0.1) as events:
        (tree / "pkg" / "added.py").write_text("a = 1\n")
        (tree / "pkg" / "m2.py").unlink()
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(seen) < 2:
            seen |= set(events.next(1))
        assert {str(tree / "pkg" / "added.py"), str(tree / "pkg" / "m2.py")} <= seen


@pytest.mark.parametrize("polling", [False, True])
def test_a_missing_tree_is_a_clear_error(tmp_path, polling):
    with pytest.raises(NovaError, match="cannot watch"):
        FileEvents(str(tmp_path / "gone"), keep, force_polling=polling).start()

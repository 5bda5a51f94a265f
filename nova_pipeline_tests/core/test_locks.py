"""The one lock order (core/locks.py), across threads and processes."""

import multiprocessing as mp
import threading
import time

import pytest

from nova_pipeline.core.errors import LockTimeoutError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.locks import bucket_locks, generation, held, pointer_lock, writer_lock

CTX = mp.get_context("spawn")


def _hold(kind, home, arg, hold_s, ready, timeout=5.0, result=None):
    """In another process: take a lock, signal, hold it ``hold_s`` seconds; exit code 3 on a timeout."""
    try:
        lock = {
            "writer": lambda: writer_lock(home, timeout),
            "buckets": lambda: bucket_locks(home, arg, timeout),
            "pointer": lambda: pointer_lock(home, timeout),
        }[kind]()
        with lock:
            ready.set()
            time.sleep(hold_s)
    except LockTimeoutError:
        raise SystemExit(3) from None


def _start(kind, home, arg=None, hold_s=0.0, timeout=5.0):
    ready = CTX.Event()
    p = CTX.Process(target=_hold, args=(kind, home, arg, hold_s, ready, timeout))
    p.start()
    return p, ready


def test_the_writer_lock_excludes_a_process_holding_bucket_locks_and_the_other_way_round(tmp_path):
    p, ready = _start("buckets", tmp_path, [3, 5], hold_s=3.0)
    assert ready.wait(30)
    started = time.monotonic()
    with pytest.raises(LockTimeoutError, match="bucket 3"):
        with writer_lock(tmp_path, timeout=0.5):
            pass
    assert time.monotonic() - started < 3.0
    p.join(30)
    with writer_lock(tmp_path, timeout=5):  # free once the slice is done
        q, _ = _start("buckets", tmp_path, [7], timeout=0.5)
        q.join(30)
        assert q.exitcode == 3  # a slice waits for the whole-store writer


def test_disjoint_bucket_holders_go_side_by_side_overlapping_ones_take_turns(tmp_path):
    with bucket_locks(tmp_path, [1, 3]):
        other, _ = _start("buckets", tmp_path, [0, 2])
        other.join(30)
        assert other.exitcode == 0
        blocked, _ = _start("buckets", tmp_path, [3], timeout=0.5)
        blocked.join(30)
        assert blocked.exitcode == 3


def test_locks_are_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path):
    with writer_lock(tmp_path):
        with writer_lock(tmp_path, timeout=0.1):  # the same thread again: no deadlock
            assert held(Layout(tmp_path).vectors_lock)
        got = []
        t = threading.Thread(target=lambda: got.append(_try(tmp_path)))
        t.start()
        t.join()
        assert got == ["timed out"]  # another thread of the same process waits, like another process
    assert not held(Layout(tmp_path).vectors_lock)


def _try(home):
    try:
        with writer_lock(home, timeout=0.2):
            return "got it"
    except LockTimeoutError:
        return "timed out"


def test_releasing_the_writer_lock_marks_a_new_generation_only_at_the_outermost_release(tmp_path):
    assert generation(tmp_path) == ""
    with writer_lock(tmp_path):
        with writer_lock(tmp_path):
            pass
        inner = generation(tmp_path)
    first = generation(tmp_path)
    assert inner == "" and first != ""
    with writer_lock(tmp_path, bump=False):  # a reader opening a view: nothing a reader sees changed
        pass
    assert generation(tmp_path) == first
    with writer_lock(tmp_path):
        pass
    assert generation(tmp_path) != first


def _bump(home, n):
    from nova_pipeline.core.serving.pointer import update_state

    for _ in range(n):

        def change(state):
            state.reason = str(int(state.reason) + 1 if state.reason.isdigit() else 1)

        update_state(home, change)


def test_pointer_updates_from_two_processes_lose_nothing(tmp_path):
    from nova_pipeline.core.serving.pointer import read_state

    procs = [CTX.Process(target=_bump, args=(tmp_path, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert read_state(tmp_path).reason == "80"  # a read-modify-write without the lock loses some

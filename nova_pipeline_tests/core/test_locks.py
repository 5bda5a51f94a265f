"""The one lock order (core/locks.py), across threads and processes."""

import fcntl
import gc
import multiprocessing as mp
import os
import threading
import time
import warnings

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


def test_a_holds_record_is_made_before_readers_see_its_generation_and_a_failing_one_frees_the_lock(tmp_path):
    seen = []
    with writer_lock(tmp_path) as hold:
        hold.before_release.append(lambda before, after: seen.append((before, after, generation(tmp_path))))
    assert seen == [("", generation(tmp_path), "")]  # called with the generation to come, before it is marked
    first = generation(tmp_path)

    def fail(before, after):
        raise OSError("disk full")

    with writer_lock(tmp_path) as hold:
        hold.before_release.append(fail)
    assert generation(tmp_path) not in ("", first) and not held(tmp_path / "vectors.lock")
    with writer_lock(tmp_path, timeout=0.5):  # free again
        pass


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


def open_fds() -> int:
    """Descriptors open now, after collecting earlier tests' garbage (which may close some meanwhile)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def held_elsewhere(path, seconds):
    """Hold ``path`` through another open file description (as another process would) for ``seconds``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    fcntl.flock(fh, fcntl.LOCK_EX)

    def release():
        time.sleep(seconds)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()

    t = threading.Thread(target=release)
    t.start()
    return t


@pytest.mark.parametrize(
    "take, path",
    [
        (lambda home, t: pointer_lock(home, t), lambda lay: lay.failover / "pointer.lock"),
        (lambda home, t: writer_lock(home, t), lambda lay: lay.vectors_lock),
        (lambda home, t: writer_lock(home, t), lambda lay: lay.vectors_bucket_lock(15)),
        (lambda home, t: bucket_locks(home, [7, 3], t), lambda lay: lay.vectors_bucket_lock(7)),
    ],
)
def test_a_lock_held_by_another_process_is_waited_for_up_to_the_timeout(tmp_path, take, path):
    lay = Layout(tmp_path)
    t = held_elsewhere(path(lay), 0.3)
    started = time.monotonic()
    with take(tmp_path, 5.0):  # waits for the release
        waited = time.monotonic() - started
    t.join()
    assert 0.25 <= waited < 3.0
    t = held_elsewhere(path(lay), 1.0)
    started = time.monotonic()
    with pytest.raises(LockTimeoutError):
        with take(tmp_path, 0.2):
            pass
    assert time.monotonic() - started < 0.7  # gives up at the timeout, not later
    t.join()


def test_the_timeout_messages_name_the_lock_and_what_may_hold_it(tmp_path):
    lay = Layout(tmp_path)
    t = held_elsewhere(lay.failover / "pointer.lock", 0.5)
    with pytest.raises(LockTimeoutError) as exc:
        with pointer_lock(tmp_path, 0.1):
            pass
    assert str(exc.value) == (
        f"another process holds {lay.failover / 'pointer.lock'} (the failover pointer) since 0 s: "
        "is a rebuild, a failover or `nova watch` running? It is released when that process ends"
    )
    t.join()
    t = held_elsewhere(lay.vectors_bucket_lock(4), 0.5)
    with pytest.raises(LockTimeoutError, match=r"\(bucket 4 of the vector store\)"):
        with writer_lock(tmp_path, 0.1):
            pass
    t.join()
    t = held_elsewhere(lay.vectors_lock, 0.5)
    with pytest.raises(LockTimeoutError, match=r"\(the vector store's writer lock\)"):
        with writer_lock(tmp_path, 0.1):
            pass
    t.join()
    with pointer_lock(tmp_path):
        out = []

        def other():
            started = time.monotonic()
            try:
                with pointer_lock(tmp_path, 0.1):
                    out.append("got it")
            except LockTimeoutError as e:
                out.append((str(e), time.monotonic() - started))

        th = threading.Thread(target=other)
        th.start()
        th.join()
    msg, waited = out[0]
    assert msg == (
        f"another thread of this process holds {lay.failover / 'pointer.lock'} "
        "(the failover pointer) since 0 s"
    )
    assert waited < 0.6


def test_a_lock_creates_its_directories_and_a_failed_wait_leaks_no_descriptor(tmp_path):
    home = tmp_path / "a" / "b"
    with pointer_lock(home):
        assert (home / "failover" / "pointer.lock").exists()
    lay = Layout(tmp_path)
    with writer_lock(tmp_path):  # creates every lock file first
        pass
    before = open_fds()
    t = held_elsewhere(lay.vectors_bucket_lock(9), 1.5)
    after_holder = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            with pytest.raises(LockTimeoutError):
                with writer_lock(tmp_path, 0.05):
                    pass
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []  # closed, not collected
    assert open_fds() == after_holder  # the writer lock and buckets 0-8 taken and given back each time
    t.join()
    assert open_fds() == before
    assert not held(lay.vectors_lock) and not held(lay.vectors_bucket_lock(0))
    with writer_lock(tmp_path, 0.5):  # nothing left held by the failed attempts
        pass


def test_the_outermost_release_frees_a_lock_for_another_thread_at_once(tmp_path):
    with pointer_lock(tmp_path):
        with pointer_lock(tmp_path):
            with pointer_lock(tmp_path):
                pass
        assert held(Layout(tmp_path).failover / "pointer.lock")  # inner releases keep it
    got = []
    t = threading.Thread(target=lambda: got.append(_try_pointer(tmp_path)))
    t.start()
    t.join()
    assert got == ["got it"]


def _try_pointer(home):
    try:
        with pointer_lock(home, timeout=0.05):
            return "got it"
    except LockTimeoutError:
        return "timed out"

"""Crash-safe writes (core/atomic.py): what a reader can see, what is synced and in which order, what is
left behind after a failure, and that no file descriptor outlives a call (long-running processes call these
millions of times)."""

import ctypes
import errno
import gc
import os
import stat

import pytest

from nova_pipeline.core import atomic
from nova_pipeline.core.atomic import (
    TMP_PREFIX,
    atomic_write_bytes,
    atomic_write_with,
    atomic_writer,
    fsync_dir,
)


def open_fds() -> int:
    """Descriptors open now, after collecting earlier tests' garbage (which may close some meanwhile)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith(TMP_PREFIX))


def test_a_write_replaces_the_file_whole_and_creates_missing_parents(tmp_path):
    target = tmp_path / "a" / "b" / "state.json"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_with(target, lambda fh: fh.write(b"two, longer"))
    assert target.read_bytes() == b"two, longer" and leftovers(target.parent) == []


def test_a_failing_block_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write(b"half")
            assert len(leftovers(tmp_path)) == 1  # the temp file exists while writing, next to the target
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # BaseException too: a signal mid-write
        with atomic_writer(target) as fh:
            raise KeyboardInterrupt
    assert leftovers(tmp_path) == []


def test_a_failing_rename_or_fsync_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def enospc(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    for name in ("replace", "fsync"):
        with monkeypatch.context() as m:
            m.setattr(atomic.os, name, enospc)
            with pytest.raises(OSError, match="No space"):
                atomic_write_bytes(target, b"new")
        assert target.read_bytes() == b"old" and leftovers(tmp_path) == [], name


def test_data_is_flushed_and_fsynced_before_the_rename_then_the_directory_is_fsynced(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        calls.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_size, st.st_ino))
        real_fsync(fd)

    def replace(a, b):
        calls.append(("replace", os.fspath(b)))
        real_replace(a, b)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_bytes(target, b"x" * 100)
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1:3] == ("file", 100)  # flushed to the OS before the fsync: all 100 bytes
    assert calls[1] == ("replace", str(target))
    assert calls[2][1] == "dir" and calls[2][3] == tmp_path.stat().st_ino  # the directory holding it


def test_fsync_dir_syncs_that_directory_and_fails_on_a_missing_one(tmp_path, monkeypatch):
    seen = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (seen.append(os.fstat(fd).st_ino), real(fd)))
    fsync_dir(tmp_path)
    assert seen == [tmp_path.stat().st_ino]
    with pytest.raises(OSError):
        fsync_dir(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "file")


class FailingLibc:
    def __init__(self):
        self.fds = []

    def syncfs(self, fd):
        self.fds.append(fd)
        ctypes.set_errno(errno.EIO)
        return -1


def test_a_failing_syncfs_raises_with_its_errno_and_closes_its_descriptor(tmp_path, monkeypatch):
    lib = FailingLibc()
    monkeypatch.setattr(atomic, "_libc", lib)
    before = open_fds()
    with pytest.raises(OSError) as exc:
        atomic.syncfs(tmp_path)
    assert exc.value.errno == errno.EIO and str(tmp_path) in str(exc.value)
    assert len(lib.fds) == 1 and open_fds() == before


def test_syncfs_falls_back_to_sync_without_libc_and_calls_libc_with_it(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(atomic, "_libc", False)
    monkeypatch.setattr(atomic.os, "sync", lambda: synced.append(True))
    atomic.syncfs(tmp_path)
    assert synced == [True]

    class Ok:
        def __init__(self):
            self.fds = []

        def syncfs(self, fd):
            self.fds.append(os.fstat(fd).st_ino)
            return 0

    ok = Ok()
    monkeypatch.setattr(atomic, "_libc", ok)
    atomic.syncfs(tmp_path)
    assert ok.fds == [tmp_path.stat().st_ino] and synced == [True]
    monkeypatch.setattr(atomic, "_libc", None)  # first use: libc looked up, the real syncfs(2) runs
    atomic.syncfs(tmp_path)
    assert atomic._libc is not None


def test_no_file_descriptor_outlives_a_call_even_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "f"
    atomic_write_bytes(target, b"warm")  # imports and caches first
    atomic.syncfs(tmp_path)
    before = open_fds()
    for i in range(200):
        atomic_write_bytes(target, str(i).encode())
        fsync_dir(tmp_path)
        atomic.syncfs(tmp_path)
        with pytest.raises(ValueError):
            with atomic_writer(target):
                raise ValueError
    with monkeypatch.context() as m:
        m.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
        for _ in range(20):
            with pytest.raises(OSError):
                fsync_dir(tmp_path)
            with pytest.raises(OSError):
                atomic_write_bytes(target, b"x")
    monkeypatch.setattr(atomic, "_libc", FailingLibc())
    for _ in range(20):
        with pytest.raises(OSError):
            atomic.syncfs(tmp_path)
    assert open_fds() == before and target.read_bytes() == b"199"


def test_libc_is_looked_up_once_with_errno_and_a_missing_syncfs_falls_back_for_good(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_libc", None)
    atomic.syncfs(tmp_path)
    lib = atomic._libc
    assert lib and hasattr(lib, "syncfs") and lib._FuncPtr._flags_ & ctypes._FUNCFLAG_USE_ERRNO
    looked_up = []

    def no_libc(*a, **k):
        looked_up.append(True)
        raise OSError("no libc")

    synced = []
    monkeypatch.setattr(atomic, "_libc", None)
    monkeypatch.setattr(atomic.ctypes, "CDLL", no_libc)
    monkeypatch.setattr(atomic.os, "sync", lambda: synced.append(True))
    atomic.syncfs(tmp_path)
    atomic.syncfs(tmp_path)
    assert looked_up == [True] and synced == [True, True] and atomic._libc is False


def test_a_syncfs_error_names_the_error_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_libc", FailingLibc())
    with pytest.raises(OSError) as exc:
        atomic.syncfs(tmp_path)
    assert exc.value.strerror == os.strerror(errno.EIO) and exc.value.filename == str(tmp_path)


def test_a_temp_file_that_cannot_be_wrapped_is_closed_and_removed(tmp_path, monkeypatch):
    before = open_fds()

    def no_fdopen(*a, **k):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(atomic.os, "fdopen", no_fdopen)
    with pytest.raises(OSError, match="Too many"):
        with atomic_writer(tmp_path / "f"):
            pass
    assert open_fds() == before and leftovers(tmp_path) == []


def test_a_temp_file_removed_meanwhile_does_not_hide_the_error(tmp_path):
    with pytest.raises(ValueError, match="the real error"):
        with atomic_writer(tmp_path / "f"):
            for name in leftovers(tmp_path):
                os.unlink(tmp_path / name)
            raise ValueError("the real error")

import os
from pathlib import Path

import blake3
import pytest

from nova_pipeline.core.errors import ScanError
from nova_pipeline.core.ingest import manifest as scanning  # the scan and its hashing
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions


def write(root: Path, rel: str, data: bytes | str = "x = 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def paths(result) -> set[str]:
    m = result.manifest
    return set(m.loc[m["status"] != "deleted", "path"])


def test_manifest_columns_hash_and_language(tmp_path):
    write(tmp_path, "a.py", "print('hi')\n")
    write(tmp_path, "docs/readme.md", "# title\n")
    r = scan(ScanOptions(tmp_path))
    m = r.manifest.set_index("path")
    assert list(r.manifest.columns) == scanning.MANIFEST_COLUMNS
    assert m.loc["a.py", "blake3"] == blake3.blake3(b"print('hi')\n").hexdigest()
    assert m.loc["a.py", "size"] == 12
    assert m.loc["a.py", "language"] == "python"
    assert m.loc["docs/readme.md", "language"] == "markdown"
    assert set(r.manifest["status"]) == {"added"}


def test_builtin_and_extra_ignores(tmp_path):
    write(tmp_path, "keep.py")
    for rel in (
        ".git/config",
        "node_modules/x/index.js",
        "__pycache__/m.cpython-311.pyc",
        ".nova/t",
        "build/out.py",
        "pkg/m.pyc",
        "env1/lib/x.py",
    ):
        write(tmp_path, rel)
    write(tmp_path, "env1/pyvenv.cfg", "home = /usr\n")
    write(tmp_path, "secret/key.txt")
    write(tmp_path, "notes.log")
    r = scan(ScanOptions(tmp_path, extra_ignore=["secret/", "*.log"]))
    assert paths(r) == {"keep.py"}


def test_a_build_package_below_the_root_is_source_and_every_ignored_dir_is_named_with_its_rule(tmp_path):
    """pip's operations/build/ is real source: only the root's build/ is a build output by default, and a
    .gitignore can say so anywhere; nothing is left out without its name and rule."""
    write(tmp_path, "pip/operations/build/metadata.py", "def prepare_metadata(): ...\n")
    write(tmp_path, "pip/operations/build/__init__.py")
    write(tmp_path, "build/lib/pip/copy.py")  # the root's build output
    write(tmp_path, "docs/.gitignore", "# generated\n\n_build/\n")
    write(tmp_path, "docs/_build/html/index.py")
    write(tmp_path, "env1/pyvenv.cfg", "home = /usr\n")
    write(tmp_path, "env1/lib/x.py")
    write(tmp_path, "pkg/m.pyc")
    write(tmp_path, "notes.log")
    r = scan(ScanOptions(tmp_path, extra_ignore=["*.log"]))
    assert {"pip/operations/build/metadata.py", "pip/operations/build/__init__.py"} <= paths(r)
    assert not any(p.startswith(("build/", "docs/_build/", "env1/")) for p in paths(r))
    assert r.stats.ignored_dirs == {
        "build/": "built-in /build/ (root only)",
        "docs/_build/": "docs/.gitignore:3 _build/",
        "env1/": "built-in virtualenv (pyvenv.cfg)",
    }
    assert r.stats.ignored_files == {"built-in editor, OS and bytecode files": 1, "NOVA_IGNORE *.log": 1}
    assert r.stats.ignored == 5


def test_a_gitignore_names_a_build_directory_below_the_root_and_the_root_one_too(tmp_path):
    write(tmp_path, ".gitignore", "build/\n")
    write(tmp_path, "pip/operations/build/metadata.py")
    write(tmp_path, "build/out.py")
    r = scan(ScanOptions(tmp_path))
    assert paths(r) == {".gitignore"}
    assert r.stats.ignored_dirs == {
        "build/": "built-in /build/ (root only)",
        "pip/operations/build/": ".gitignore:1 build/",
    }


def test_nested_gitignore_with_negation(tmp_path):
    write(tmp_path, ".gitignore", "*.tmp\ngenerated/\n")
    write(tmp_path, "a.tmp")
    write(tmp_path, "generated/g.py")
    write(tmp_path, "sub/.gitignore", "!keep.tmp\nlocal.py\n")
    write(tmp_path, "sub/keep.tmp")
    write(tmp_path, "sub/drop.tmp")
    write(tmp_path, "sub/local.py")
    write(tmp_path, "local.py")  # only ignored inside sub/
    write(tmp_path, "sub/deeper/local.py")  # sub/.gitignore's "local.py" matches at any depth below sub
    r = scan(ScanOptions(tmp_path))
    assert paths(r) == {".gitignore", "sub/.gitignore", "sub/keep.tmp", "local.py"}


def test_binary_and_size_limit_are_counted(tmp_path):
    write(tmp_path, "ok.py", "a = 1\n")
    write(tmp_path, "blob.bin", b"\x00\x01\x02" * 10)
    write(tmp_path, "big.txt", "y" * 5000)
    write(tmp_path, "late_nul.txt", b"a" * 9000 + b"\x00")  # NUL after the first 8,000 bytes: text, as in git
    r = scan(ScanOptions(tmp_path, max_file_size=4096))
    assert paths(r) == {"ok.py"}
    assert r.stats.skipped["binary"] == 1
    assert r.stats.skipped["too_large"] == 2
    r2 = scan(ScanOptions(tmp_path, max_file_size=100_000))
    assert paths(r2) == {"ok.py", "big.txt", "late_nul.txt"}


def test_non_utf8_content_is_hashed(tmp_path):
    write(tmp_path, "latin1.txt", "caf\xe9\n".encode("latin-1"))
    r = scan(ScanOptions(tmp_path))
    assert paths(r) == {"latin1.txt"}


def test_symlink_escape_and_loop(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    write(outside, "secret.py")
    write(root, "a/inner.py")
    os.symlink(outside, root / "escape_dir")
    os.symlink(outside / "secret.py", root / "escape_file.py")
    os.symlink(root / "a", root / "a" / "loop")  # a/loop -> a: a cycle
    os.symlink(root / "missing", root / "dangling")
    os.symlink(root / "a" / "inner.py", root / "alias.py")  # inside the root: followed
    r = scan(ScanOptions(root))
    assert paths(r) == {"a/inner.py", "alias.py"}
    assert r.stats.skipped["symlink_escape"] == 2
    assert r.stats.skipped["symlink_loop"] == 1
    assert r.stats.skipped["broken_symlink"] == 1


def test_vanished_file_is_a_logged_skip(tmp_path, monkeypatch, caplog):
    write(tmp_path, "stays.py")
    gone = write(tmp_path, "gone.py")
    real = scanning._read_and_hash

    def vanish_then_read(path, size, max_size):
        if path.endswith("gone.py"):
            os.unlink(gone)
        return real(path, size, max_size)

    monkeypatch.setattr(scanning, "_read_and_hash", vanish_then_read)
    r = scan(ScanOptions(tmp_path))
    assert paths(r) == {"stays.py"}
    assert r.stats.skipped["vanished"] == 1
    assert "gone.py (vanished)" in caplog.text


def test_unreadable_file_is_skipped(tmp_path, monkeypatch, caplog):
    # Injected, because the test suite may run as root, who can read any file whatever its mode.
    write(tmp_path, "ok.py")
    write(tmp_path, "locked.py")
    real = scanning._read_and_hash

    def deny(path, size, max_size):
        if path.endswith("locked.py"):
            raise PermissionError(13, "Permission denied", path)
        return real(path, size, max_size)

    monkeypatch.setattr(scanning, "_read_and_hash", deny)
    r = scan(ScanOptions(tmp_path))
    assert paths(r) == {"ok.py"}
    assert r.stats.skipped["unreadable"] == 1
    assert "locked.py (unreadable)" in caplog.text


def test_unreadable_file_keeps_previous_entry(tmp_path, monkeypatch):
    write(tmp_path, "ok.py")
    p = write(tmp_path, "flaky.py", "v = 1\n")
    first = scan(ScanOptions(tmp_path))
    os.utime(p, ns=(1, 1))  # force a re-hash

    def deny(path, size, max_size):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(scanning, "_read_and_hash", deny)
    second = scan(ScanOptions(tmp_path), first.manifest)
    row = second.manifest.set_index("path").loc["flaky.py"]
    assert row["status"] == "unchanged"
    assert row["blake3"] == first.manifest.set_index("path").loc["flaky.py", "blake3"]
    assert second.stats.skipped["unreadable"] == 1


def test_undecodable_file_name_is_skipped(tmp_path):
    write(tmp_path, "ok.py")
    bad = os.path.join(os.fsencode(tmp_path), b"bad\xff.py")
    with open(bad, "wb") as fh:
        fh.write(b"x = 1\n")
    r = scan(ScanOptions(tmp_path))
    assert paths(r) == {"ok.py"}
    assert r.stats.skipped["undecodable_name"] == 1


def test_unchanged_rescan_rehashes_nothing(stdlib_tree):
    first = scan(ScanOptions(stdlib_tree))
    assert first.stats.bytes_hashed == first.stats.bytes > 0
    second = scan(ScanOptions(stdlib_tree), first.manifest)
    assert second.stats.bytes_hashed == 0
    assert second.stats.files_hashed == 0
    assert set(second.manifest["status"]) == {"unchanged"}
    assert second.manifest["blake3"].tolist() == first.manifest["blake3"].tolist()


def test_edit_delete_and_rename(tmp_path):
    write(tmp_path, "edit.py", "a = 1\n")
    write(tmp_path, "old_name.py", "same content\n")
    write(tmp_path, "remove.py", "bye\n")
    write(tmp_path, "stay.py", "stay\n")
    first = scan(ScanOptions(tmp_path))
    write(tmp_path, "edit.py", "a = 22\n")
    os.rename(tmp_path / "old_name.py", tmp_path / "new_name.py")
    os.unlink(tmp_path / "remove.py")
    second = scan(ScanOptions(tmp_path), first.manifest)
    status = dict(zip(second.manifest["path"], second.manifest["status"]))
    assert status == {
        "edit.py": "changed",
        "new_name.py": "added",
        "old_name.py": "deleted",
        "remove.py": "deleted",
        "stay.py": "unchanged",
    }
    digests = dict(zip(second.manifest["path"], second.manifest["blake3"]))
    assert digests["new_name.py"] == digests["old_name.py"]
    assert second.stats.files_hashed == 2  # edit.py and new_name.py only
    # a deleted row is not carried into the next comparison
    third = scan(ScanOptions(tmp_path), second.manifest)
    assert "old_name.py" not in set(third.manifest["path"])


def test_touched_but_identical_file_is_unchanged(tmp_path):
    p = write(tmp_path, "t.py", "same\n")
    first = scan(ScanOptions(tmp_path))
    os.utime(p, ns=(10**18, 10**18))
    second = scan(ScanOptions(tmp_path), first.manifest)
    assert second.manifest["status"].tolist() == ["unchanged"]
    assert second.stats.files_hashed == 1
    assert second.manifest["mtime_ns"].tolist() == [10**18]  # the new mtime is recorded: no re-hash next time
    third = scan(ScanOptions(tmp_path), second.manifest)
    assert third.stats.files_hashed == 0 and third.manifest.equals(second.manifest)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ScanError, match=str(tmp_path / "nope")):
        scan(ScanOptions(tmp_path / "nope"))


def test_exclude_dirs_keeps_state_out(tmp_path):
    write(tmp_path, "a.py")
    write(tmp_path, "state/tables/x.parquet", "pretend")
    r = scan(ScanOptions(tmp_path, exclude_dirs=[tmp_path / "state"]))
    assert paths(r) == {"a.py"}


def test_a_failing_walk_surfaces_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")

    def failing_walk(options, stats):
        raise PermissionError(13, "walk failed", str(tmp_path))
        yield  # pragma: no cover - a generator, like the real walk

    monkeypatch.setattr(scanning, "walk", failing_walk)
    with pytest.raises(PermissionError, match="walk failed"):
        scanning.scan(ScanOptions(tmp_path))


def test_the_event_filter_keeps_exactly_what_the_scan_keeps(tmp_path):
    from nova_pipeline.core.ingest.walk import PathFilter

    root = tmp_path / "tree"
    for rel in (
        "a.py",
        "pkg/b.py",
        "pkg/build/c.py",  # below the root: kept
        "build/d.py",  # at the root: the built-in rule
        "pkg/__pycache__/e.pyc",
        "node_modules/x/f.js",
        "docs/_build/g.html",  # a .gitignore below says so
        "docs/h.md",
        "pkg/i.swp",
        "state/j.py",  # an excluded state dir (NOVA_HOME)
        "logs/k.log",  # NOVA_IGNORE
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "docs" / ".gitignore").write_text("_build/\n")
    options = ScanOptions(root, extra_ignore=["*.log"], exclude_dirs=[root / "state"])
    kept = set(scan(options).manifest["path"])
    f = PathFilter(options)
    every = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {p for p in every if f.keeps(root / p)} == kept
    assert not f.keeps(tmp_path / "elsewhere.py") and not f.keeps(root)
    assert f.keeps(root / "docs" / ".gitignore")  # a rule changed: the scan decides again
    (root / "docs" / ".gitignore").write_text("")  # and the filter reads it again
    assert f.keeps(root / "docs" / "_build" / "g.html")

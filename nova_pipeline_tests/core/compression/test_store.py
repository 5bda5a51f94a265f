import errno
import os

import blake3
import pytest
import zstandard as zstd

from nova_pipeline.core.compression import store as store_mod
from nova_pipeline.core.compression.dictionary import DictionaryOptions, DictionaryRegistry, build_for_tree
from nova_pipeline.core.compression.store import ContentStore, update_store
from nova_pipeline.core.errors import StoreCorruptError, StoreError
from nova_pipeline.core.ingest.manifest import scan, unique_contents
from nova_pipeline.core.ingest.walk import ScanOptions


@pytest.fixture
def built(stdlib_tree, tmp_path):
    home = tmp_path / "home"
    manifest = scan(ScanOptions(stdlib_tree)).manifest
    info, _, _ = build_for_tree(
        unique_contents(stdlib_tree, manifest), DictionaryRegistry(home), DictionaryOptions(dict_size=16_384)
    )
    store = ContentStore(home)
    update = update_store(store, stdlib_tree, manifest, info.blake3)
    return store, manifest, info, update, stdlib_tree


def test_round_trip_frames_and_dedup(built):
    store, manifest, info, update, root = built
    assert update.put.written == update.objects == manifest["blake3"].nunique()
    for key, rel in list(zip(manifest["blake3"], manifest["path"]))[:20]:
        assert store.get(key) == (root / rel).read_bytes()
        frame = open(store.object_path(key), "rb").read()
        params = zstd.get_frame_parameters(frame)
        assert params.dict_id == info.dict_id and not params.has_checksum
        assert params.content_size == (root / rel).stat().st_size
    assert update.ratio > 3.0
    assert store.verify(store.sample_keys(0)) == []


def test_identical_files_are_stored_once(tmp_path):
    (tmp_path / "src").mkdir()
    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / "src" / name).write_text("print('same')\n" * 50)
    (tmp_path / "src" / "d.py").write_text("print('other')\n")
    manifest = scan(ScanOptions(tmp_path / "src")).manifest
    update = update_store(ContentStore(tmp_path / "h"), tmp_path / "src", manifest, "")
    assert update.objects == 2
    assert update.dedup_saved_bytes == 2 * len("print('same')\n" * 50)


def test_second_run_compresses_nothing(built):
    store, manifest, info, update, root = built
    again = update_store(ContentStore(store.home), root, manifest, info.blake3)
    assert again.put.written == 0 and again.put.already_stored == update.objects
    assert again.put.bytes_in == 0


def test_bit_flip_is_detected_and_named(built):
    store, manifest, info, update, root = built
    key = manifest["blake3"].iloc[0]
    path = store.object_path(key)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    with open(path, "wb") as fh:
        fh.write(raw)
    with pytest.raises(StoreCorruptError, match=key):
        ContentStore(store.home).get(key)
    failures = ContentStore(store.home).verify(store.sample_keys(0))
    assert len(failures) == 1 and key in failures[0] and path in failures[0]


def test_file_changed_after_scan_is_not_stored_under_a_wrong_key(stdlib_tree, tmp_path, caplog):
    manifest = scan(ScanOptions(stdlib_tree)).manifest
    rel = manifest["path"].iloc[0]
    old_key = manifest["blake3"].iloc[0]
    (stdlib_tree / rel).write_text("# changed after the scan\n")
    store = ContentStore(tmp_path / "h")
    update = update_store(store, stdlib_tree, manifest, "")
    assert update.put.skipped == {"changed_since_scan": 1}
    assert old_key not in set(store.index()["key"])
    assert not os.path.exists(store.object_path(old_key))
    new_key = blake3.blake3(b"# changed after the scan\n").hexdigest()
    assert not os.path.exists(store.object_path(new_key))
    assert "changed since the scan" in caplog.text


def test_enospc_fails_cleanly_and_the_store_still_verifies(built, monkeypatch, tmp_path):
    store, manifest, info, update, root = built
    # add new content, then make the disk "fill up" after a few object writes
    for i in range(20):
        (root / f"new_{i}.py").write_text(f"value_{i} = {i}\n" * 40)
    manifest2 = scan(ScanOptions(root), manifest).manifest
    calls = {"n": 0}
    real_write = os.write

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store_mod.os, "write", full_disk)
    with pytest.raises(StoreError, match="No space left on device"):
        update_store(ContentStore(store.home), root, manifest2, info.blake3)
    monkeypatch.setattr(store_mod.os, "write", real_write)
    leftovers = [p for p in (store.home / "store").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    fresh = ContentStore(store.home)
    assert len(fresh.index()) == update.objects  # the previous index stays committed
    assert fresh.verify(fresh.sample_keys(0)) == []
    # and the next run completes the work
    done = update_store(fresh, root, manifest2, info.blake3)
    assert done.put.written == 20 and fresh.verify(fresh.sample_keys(0)) == []


def test_garbage_is_collected_only_after_commit(built):
    store, manifest, info, update, root = built
    rel = manifest["path"].iloc[0]
    key = manifest["blake3"].iloc[0]
    os.unlink(root / rel)
    manifest2 = scan(ScanOptions(root), manifest).manifest
    again = update_store(ContentStore(store.home), root, manifest2, info.blake3)
    assert again.removed_objects == 1
    assert not os.path.exists(store.object_path(key))
    assert key not in set(ContentStore(store.home).index()["key"])


def test_objects_of_a_golden_version_survive_an_update_that_dropped_them(stdlib_tree, tmp_path):
    import shutil

    from nova_pipeline.core.protect import backup, golden
    from nova_pipeline_tests.conftest import FakeEmbedder, build_home

    home = tmp_path / "home"
    build_home(stdlib_tree, home)
    v1 = golden.promote(home, FakeEmbedder.fingerprint).version
    old_keys = set(ContentStore(home).index()["key"])
    shutil.rmtree(stdlib_tree / "email")  # the tree moves on: most contents are gone from it
    manifest = scan(ScanOptions(stdlib_tree)).manifest
    # the plain core call, no extra argument: the store itself spares what golden versions refer to
    update_store(ContentStore(home), stdlib_tree, manifest, "")
    store = ContentStore(home)
    dropped = old_keys - set(store.index()["key"])
    assert len(dropped) > 20
    assert store.verify(sorted(dropped)) == []  # still stored, still decompressing with their dictionary
    b = backup.create_backup(home).info
    assert backup.verify(home, b.id, 3) == []
    assert golden.current_version(home).name == v1.name


def test_objects_no_golden_version_needs_are_collected(stdlib_tree, tmp_path):
    home = tmp_path / "home"
    update_store(ContentStore(home), stdlib_tree, scan(ScanOptions(stdlib_tree)).manifest, "")
    import shutil

    shutil.rmtree(stdlib_tree / "email")
    update = update_store(ContentStore(home), stdlib_tree, scan(ScanOptions(stdlib_tree)).manifest, "")
    assert update.removed_objects > 20  # without a golden version, nothing holds them


def test_a_pin_keeps_its_objects_whatever_the_index_says_and_unpinning_frees_them(built):
    store, manifest, info, update, root = built
    keys = store.index()[["key", "dict_blake3"]]
    store.pin("snapshot-a", keys.head(5))
    assert store.pins() == ["snapshot-a"]
    store.commit_index(store.index().iloc[0:0])  # an index that refers to nothing at all
    removed, _ = store.collect_garbage()
    assert removed == len(keys) - 5
    assert store.verify(keys["key"].head(5).tolist()) == []  # the pinned five are still stored and readable
    assert store.registry.path(info.blake3).exists()  # and so is the dictionary they need
    assert store.unpin("snapshot-a") and not store.unpin("snapshot-a")
    removed, _ = store.collect_garbage()
    assert removed == 5 and store.pins() == []


def test_a_store_from_before_pins_collects_nothing_until_its_pins_are_recorded(built):
    """An existing home upgraded from a version without pins: its golden versions' objects are in no pin
    yet, so garbage collection waits rather than delete what an older golden version needs."""
    import shutil

    store, manifest, info, update, root = built
    shutil.rmtree(store.pins_dir)  # as a store made before pins
    rel = manifest["path"].iloc[0]
    os.unlink(root / rel)
    again = update_store(
        ContentStore(store.home), root, scan(ScanOptions(root), manifest).manifest, info.blake3
    )
    assert again.removed_objects == 0 and os.path.exists(store.object_path(manifest["blake3"].iloc[0]))


def test_an_unreadable_pin_stops_garbage_collection_naming_the_pin(built):
    store, *_ = built
    (store.pins_dir / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(StoreCorruptError, match="broken.parquet"):
        store.collect_garbage()


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b"])
def test_a_pin_name_is_a_plain_file_name(built, name):
    store, *_ = built
    with pytest.raises(ValueError, match="plain file name"):
        store.pin(name, store.index())


def test_an_unchanged_update_keeps_the_index_without_a_stat_of_each_object_or_a_gc(built, monkeypatch):
    store, manifest, info, update, root = built
    assert not update.unchanged and store.index_attrs()["inputs_digest"]
    index = store.index_path.read_bytes()

    def no_stat(path):
        raise AssertionError(f"an unchanged update stat'ed {path}")

    monkeypatch.setattr(store_mod.os.path, "exists", no_stat)
    monkeypatch.setattr(ContentStore, "collect_garbage", lambda self: no_stat("the objects' directories"))
    again = update_store(ContentStore(store.home), root, manifest, info.blake3)
    assert again.unchanged and again.put.written == 0 and again.objects == update.objects
    assert (again.raw_bytes, again.stored_bytes) == (update.raw_bytes, update.stored_bytes)
    assert again.dedup_saved_bytes == update.dedup_saved_bytes
    assert store.index_path.read_bytes() == index  # not written again
    monkeypatch.undo()
    # another dictionary, or level, is another update
    assert not update_store(ContentStore(store.home), root, manifest, info.blake3, level=5).unchanged


def test_a_pin_change_or_another_writer_of_the_index_makes_the_update_run_again(built):
    store, manifest, info, update, root = built
    store.commit_index(store.index().iloc[5:])  # another writer (as nova watch): no digest in the footer
    assert store.index_attrs() == {}
    again = update_store(ContentStore(store.home), root, manifest, info.blake3)
    assert not again.unchanged and again.put.written == 5
    # a file's content that only a pin keeps once the file is gone
    (root / "pinned_only.py").write_text("kept = 'by the pin'\n" * 30)
    manifest = scan(ScanOptions(root), manifest).manifest
    update_store(ContentStore(store.home), root, manifest, info.blake3)
    key = blake3.blake3((root / "pinned_only.py").read_bytes()).hexdigest()
    store.pin("snapshot-a", ContentStore(store.home).index().query("key == @key"))
    os.unlink(root / "pinned_only.py")
    manifest = scan(ScanOptions(root), manifest).manifest
    assert update_store(ContentStore(store.home), root, manifest, info.blake3).removed_objects == 0
    assert update_store(ContentStore(store.home), root, manifest, info.blake3).unchanged
    assert store.unpin("snapshot-a")  # garbage collection's roots changed: the update runs again
    after = update_store(ContentStore(store.home), root, manifest, info.blake3)
    assert not after.unchanged and after.removed_objects == 1 and not os.path.exists(store.object_path(key))


def test_a_file_skipped_by_an_update_is_tried_again_by_the_next_with_the_same_manifest(stdlib_tree, tmp_path):
    manifest = scan(ScanOptions(stdlib_tree)).manifest
    rel, key = manifest["path"].iloc[0], manifest["blake3"].iloc[0]
    original = (stdlib_tree / rel).read_bytes()
    (stdlib_tree / rel).write_text("# changed after the scan\n")
    store = ContentStore(tmp_path / "h")
    assert update_store(store, stdlib_tree, manifest, "").put.skipped == {"changed_since_scan": 1}
    assert store.index_attrs() == {}  # not a whole update: nothing says it may be kept
    (stdlib_tree / rel).write_bytes(original)  # back as the manifest has it
    again = update_store(ContentStore(tmp_path / "h"), stdlib_tree, manifest, "")
    assert not again.unchanged and again.put.written == 1 and os.path.exists(store.object_path(key))
    assert update_store(ContentStore(tmp_path / "h"), stdlib_tree, manifest, "").unchanged

import json
import os
import shutil

import pytest

from nova_pipeline.core import audit, golden
from nova_pipeline.core.errors import ConfirmationRequired, GoldenCopyError
from nova_pipeline.core.vector_store import existing_ids, get_collection, open_client
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, inject_crash

FP = FakeEmbedder.fingerprint


@pytest.fixture
def home(json_tree, tmp_path):
    h = tmp_path / "home"
    chunks = build_home(json_tree, h)
    return h, chunks


def test_promote_writes_a_verified_read_only_version(home):
    h, chunks = home
    v = golden.promote(h, FP)
    assert golden.current_version(h).name == v.name and v.count == len(chunks)
    manifest = json.loads((v.path / golden.MANIFEST).read_text())
    assert "export/vectors.parquet" in manifest["files"] and "store_index.parquet" in manifest["files"]
    assert any(k.startswith("vectors/") for k in manifest["files"])
    assert golden.verify_tree(v.path) == []
    assert (v.path / "model.json").stat().st_mode & 0o222 == 0


def test_a_changed_file_fails_verification_naming_it(home):
    h, _ = home
    v = golden.promote(h, FP)
    target = v.path / "tables" / "source_files.parquet"
    os.chmod(target, 0o644)
    with open(target, "r+b") as fh:
        fh.seek(10)
        b = fh.read(1)
        fh.seek(10)
        fh.write(bytes([b[0] ^ 1]))
    failures = golden.verify_tree(v.path)
    assert len(failures) == 1 and str(target) in failures[0]


def test_retention_keeps_the_last_n_and_never_current(home):
    h, _ = home
    names = [golden.promote(h, FP, keep=2).name for _ in range(4)]
    assert [v.name for v in golden.list_versions(h)] == names[-2:]
    assert golden.current_version(h).name == names[-1]


def test_a_crash_at_any_step_of_a_promotion_leaves_nothing_partial(home, monkeypatch):
    h, _ = home
    first = golden.promote(h, FP)
    targets = [(golden, "atomic_write_bytes"), (golden, "fsync_dir"), (golden.os, "rename"),
               (golden.shutil, "copytree"), (golden.shutil, "copy2"), (golden, "set_read_only")]
    crashes = 0
    for fail_at in range(1, 60):
        with monkeypatch.context() as m:
            calls = inject_crash(m, targets, fail_at)
            try:
                golden.promote(h, FP)
            except OSError:
                crashes += 1
            else:
                assert calls["n"] < fail_at
                break
        listed = golden.list_versions(h)
        assert all(golden.verify_tree(v.path) == [] for v in listed)
        assert golden.current_version(h) is not None
        assert not any(p.name.startswith(golden.PARTIAL_PREFIX) for p in golden.golden_root(h).iterdir())
        assert golden.verify_tree(first.path) == []
    assert crashes >= 8  # every write, copy, fsync and rename step was hit once


def test_reset_rebuilds_a_deleted_index_without_embedding(home):
    h, chunks = home
    golden.promote(h, FP)
    with pytest.raises(ConfirmationRequired):
        golden.reset_index(h, None, False, "alice")
    golden._forget_cached_clients()
    shutil.rmtree(h / "vectors")
    golden._forget_cached_clients()
    entry = golden.reset_index(h, None, True, "alice")
    assert entry["outcome"] == "ok" and entry["details"]["count"] == len(chunks)
    assert existing_ids(get_collection(open_client(h), FP, create=False)) == set(chunks["chunk_id"])
    records = audit.read(h)
    assert [(r["who"], r["action"], r["outcome"]) for r in records] == [
        ("alice", "reset_index", "refused: confirm is not true"), ("alice", "reset_index", "ok")]


def test_reset_refuses_a_tampered_golden_copy(home):
    h, _ = home
    v = golden.promote(h, FP)
    os.chmod(v.path / "model.json", 0o644)
    (v.path / "model.json").write_text("{}")
    with pytest.raises(GoldenCopyError, match="model.json"):
        golden.reset_index(h, None, True, "bob")


def test_runtime_copy_is_writable_and_golden_is_untouched(home):
    h, _ = home
    v = golden.promote(h, FP)
    rt = golden.make_runtime_copy(h)
    assert rt == h / "runtime" / "vectors" and os.access(rt, os.W_OK)
    (rt / "scratch").write_text("x")
    assert golden.verify_tree(v.path) == []


@pytest.mark.integration
def test_server_mode_exports_and_refills_an_empty_server(json_tree, tmp_path, chroma_server, fake_embedder):
    from nova_pipeline.core.chunking import chunk_manifest
    from nova_pipeline.core.embedding import EmbeddingCache, Tokenizer
    from nova_pipeline.core.scanning import ScanOptions, scan
    from nova_pipeline.core.vector_store import reconcile

    h = tmp_path / "home"
    tok = Tokenizer()
    chunks, _ = chunk_manifest(json_tree, scan(ScanOptions(json_tree)).manifest, None, tok.count, tok.max_seq_length)
    col = get_collection(open_client(h, chroma_server), FP)
    reconcile(col, chunks, fake_embedder, EmbeddingCache(h, FP))
    v = golden.promote(h, FP, chroma_url=chroma_server)
    assert not (v.path / "vectors").exists() and (v.path / "export" / "vectors.parquet").exists()
    assert v.count == len(chunks) and golden.verify_tree(v.path) == []
    # the server comes back empty
    open_client(h, chroma_server).delete_collection(col.name)
    entry = golden.reset_index(h, chroma_server, True, "dave")
    assert entry["details"]["upserted"] == len(chunks)
    assert existing_ids(get_collection(open_client(h, chroma_server), FP, create=False)) == set(chunks["chunk_id"])

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nova_pipeline.core.compression import store as store_mod
from nova_pipeline.core.errors import ConfirmationRequired, GoldenCopyError, MassDeletionError
from nova_pipeline.core.index import lexical, lexical_delta
from nova_pipeline.core.index.embedding_cache import EmbeddingCache
from nova_pipeline.core.index.vector_store import existing_ids, fresh_client, get_collection, open_client
from nova_pipeline.core.protect import audit, backup, golden
from nova_pipeline.core.protect.golden import promotion as promote_mod
from nova_pipeline.core.protect.golden import verify as verify_mod
from nova_pipeline.core.protect.golden import versions as versions_mod
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, inject_crash

FP = FakeEmbedder.fingerprint


@pytest.fixture
def home(json_tree, tmp_path):
    h = tmp_path / "home"
    chunks = build_home(json_tree, h)
    return h, chunks


def edit(src, n=1):
    """Append a new function to json/decoder.py: one file of the tree changes."""
    p = src / "json" / "decoder.py"
    p.write_text(p.read_text() + f"\n\ndef added_{n}(s):\n    return s * {n}\n")


def test_promote_writes_a_verified_read_only_version(home):
    h, chunks = home
    p = golden.promote(h, FP)
    v = p.version
    assert p.promoted and p.reason == "first golden version" and p.bytes_linked == 0
    assert golden.current_version(h).name == v.name and v.count == len(chunks)
    manifest = json.loads((v.path / golden.MANIFEST).read_text())
    shards = [k for k in manifest["files"] if k.startswith("export/part-")]
    assert shards and "store_index.parquet" in manifest["files"]
    assert len(shards) == len({golden.shard_of(p) for p in chunks["path"]})
    assert golden.verify_tree(v.path) == []
    assert (v.path / "model.json").stat().st_mode & 0o222 == 0
    assert p.bytes_written == v.bytes  # nothing to share with on the first promotion


def test_export_shards_double_with_the_chunks_and_keep_their_count_within_a_factor_of_two():
    per = golden.SHARD_CHUNKS
    assert golden.export_shards(0) == golden.export_shards(64 * per) == 64
    assert golden.export_shards(64 * per + 1) == 128 and golden.export_shards(342_000) == 256
    # a count is kept while its shards hold between half and twice the aim: a tree that moves by a file
    # never reshuffles every shard
    assert golden.export_shards(342_001, 256) == golden.export_shards(2 * per * 256, 256) == 256
    assert golden.export_shards(2 * per * 256 + 1, 256) == 1024  # at most the aim again
    assert golden.export_shards(per * 128 - 1, 256) == 128  # fewer than half the aim: shrinks
    assert golden.export_shards(10, 64) == 64  # the least count holds any small tree


def test_a_new_export_shard_count_is_a_verified_version_and_the_runtime_copy_follows_it(
    stdlib_tree, tmp_path, monkeypatch
):
    from nova_pipeline.core.protect.golden import export as export_mod

    h = tmp_path / "home"
    chunks = build_home(stdlib_tree, h)
    first = golden.promote(h, FP)
    assert json.loads((first.version.path / "model.json").read_text())["export_shards"] == 64
    golden.make_runtime_copy(h)
    per = max(1, len(chunks) // 512)  # as if the tree had grown: more than twice the aim in 64 shards
    monkeypatch.setattr(export_mod, "SHARD_CHUNKS", per)
    n = golden.export_shards(len(chunks), 64)
    assert n > 64
    second = golden.promote(h, FP)  # the same chunks in other shards: a new version
    v = second.version
    assert second.promoted and json.loads((v.path / "model.json").read_text())["export_shards"] == n
    files = json.loads((v.path / golden.MANIFEST).read_text())["files"]
    parts = {k for k in files if k.startswith("export/part-")}
    assert parts == {export_mod.shard_name(golden.shard_of(p, n)) for p in chunks["path"]}
    assert golden.verify_tree(v.path) == []
    assert not golden.promote(h, FP).promoted  # CURRENT's count is kept: nothing moves again
    applied = golden.make_runtime_copy(h)
    # the same vectors in other shards: nothing to upsert (a diff shard by shard would upsert every chunk
    # that moved)
    assert applied.version == v.name and applied.count == len(chunks)
    assert applied.upserted == 0 and applied.deleted == 0
    with fresh_client(h, path=golden.runtime_dir(h)) as client:
        assert existing_ids(get_collection(client, FP)) == set(chunks["chunk_id"])


def test_an_unchanged_index_promotes_nothing(home):
    h, _ = home
    first = golden.promote(h, FP)
    again = golden.promote(h, FP)
    assert not again.promoted and again.bytes_written == 0
    assert again.reason == f"unchanged: CURRENT {first.version.name} still matches"
    assert [v.name for v in golden.list_versions(h)] == [first.version.name]


def test_an_unchanged_promotion_reads_no_chunk_and_a_new_chunks_table_is_read_again(home, monkeypatch):
    h, chunks = home
    first = golden.promote(h, FP)
    reads = []
    real_read = promote_mod.read_table
    from nova_pipeline.core import tables

    def counted(*a, **kw):
        reads.append(a[1])
        return real_read(*a, **kw)

    monkeypatch.setattr(promote_mod, "read_table", counted)
    monkeypatch.setattr(tables, "read_table", counted)  # lexical.kept_digest's
    assert not golden.promote(h, FP).promoted and "source_chunks" not in reads  # its digests were kept
    # the same rows, written again by another writer: a new version of the table, so its digests are
    # computed again (and the index still matches them)
    tables.write_table(h, "source_chunks", pd.read_parquet(h / "tables" / "source_chunks.parquet"))
    again = golden.promote(h, FP)
    assert not again.promoted and again.version.name == first.version.name
    assert reads.count("source_chunks") == 2  # the shard digests and the lexical digest, once each


def test_an_edit_of_one_file_writes_far_less_and_shares_the_rest(stdlib_tree, tmp_path):
    h = tmp_path / "home"
    build_home(stdlib_tree, h)
    first = golden.promote(h, FP)
    edit(stdlib_tree)
    chunks = build_home(stdlib_tree, h)
    second = golden.promote(h, FP)
    v1, v2 = first.version, second.version
    assert second.promoted and second.reason == f"changed since {v1.name}"
    assert (
        second.shards_written == 1
        and second.shards_linked == len({golden.shard_of(p) for p in chunks["path"]}) - 1
    )
    # the BM25 index is one file set over every chunk (its IDF is global): rewritten on any change, like
    # model.json and the tables, but its texts are sharded by path like the export: one shard is written;
    # everything else of an edit of one file is one export shard
    files = json.loads((v2.path / golden.MANIFEST).read_text())["files"]

    def shared(rel):
        return (v1.path / rel).exists() and os.path.samefile(v1.path / rel, v2.path / rel)

    texts = [rel for rel in files if rel.startswith("lexical/texts/")]
    assert len(texts) == 64 and [rel for rel in texts if not shared(rel)] == [
        f"lexical/texts/part-{lexical.text_shard('json/decoder.py'):02d}.arrow"
    ]
    lexical_bytes = sum(
        f["size"] for rel, f in files.items() if rel.startswith("lexical/") and not shared(rel)
    )
    assert 0 < lexical_bytes < 0.3 * first.bytes_written, (lexical_bytes, first.bytes_written)
    rest = second.bytes_written - lexical_bytes
    assert rest < 0.15 * first.bytes_written, (rest, first.bytes_written)
    assert second.bytes_written + second.bytes_linked == v2.bytes
    linked = next(
        rel
        for rel in json.loads((v2.path / golden.MANIFEST).read_text())["files"]
        if rel.startswith("export/")
        and (v1.path / rel).exists()
        and os.path.samefile(v1.path / rel, v2.path / rel)
    )
    assert os.stat(v2.path / linked).st_nlink == 2
    # deleting the older version leaves the newer one whole, read-only, and its backups good
    assert golden.apply_retention(h, keep=1) == [v1.name]
    assert not v1.path.exists()
    assert golden.verify_tree(v2.path) == []
    assert os.stat(v2.path / linked).st_nlink == 1 and os.stat(v2.path / linked).st_mode & 0o222 == 0
    b = backup.create_backup(h).info
    assert backup.verify(h, b.id, 3) == []


def test_a_promotion_reads_the_vectors_of_the_shards_it_wrote_and_not_those_it_linked(
    home, json_tree, monkeypatch
):
    h, _ = home
    v1 = golden.promote(h, FP).version
    found = json.loads((v1.path / golden.VERIFIED).read_text())["files"]
    exported = {f.relative_to(v1.path).as_posix() for f in golden.export_files(v1.path)}
    assert set(found) == exported and sum(f["rows"] for f in found.values()) == v1.count
    assert all(abs(f["max_norm"] - 1) < 1e-5 and f["dim"] == 384 for f in found.values() if f["rows"])
    read = []
    real = verify_mod.read_shard
    monkeypatch.setattr(
        verify_mod, "read_shard", lambda f, cols=None: read.append((f.name, cols)) or real(f, cols)
    )
    edit(json_tree)
    build_home(json_tree, h)
    p = golden.promote(h, FP)
    assert p.promoted and p.shards_written >= 1 and golden.verify_tree(p.version.path) == []
    vectors_read = {name for name, cols in read if cols and "embedding" in cols}
    written = {
        rel.rsplit("/", 1)[1]
        for rel, f in json.loads((p.version.path / golden.VERIFIED).read_text())["files"].items()
        if found.get(rel, {}).get("blake3") != f["blake3"]
    }
    assert written and vectors_read == written  # every linked shard's ids were read, not its vectors


def test_a_known_shard_is_read_again_when_its_norms_could_beat_a_sampled_vector(home):
    h, _ = home
    v = golden.promote(h, FP).version
    found = json.loads((v.path / golden.VERIFIED).read_text())["files"]
    files = sorted(r for r, f in found.items() if f["rows"])
    fresh, loud = files[0], files[1]
    known = {r: f for r, f in found.items() if r != fresh}
    assert golden.verify_export(v.path, known=known)["scanned"] == 1  # only the file not known
    known[loud] = {**known[loud], "max_norm": 2.0}  # a vector of norm 2 could beat a unit vector's self-match
    out = golden.verify_export(v.path, known=known)
    assert out["failures"] == [] and out["scanned"] == 2
    assert golden.verify_export(v.path, known=found)["scanned"] == 0  # all known: nothing to sample
    assert golden.verify_export(v.path)["scanned"] == len(golden.export_files(v.path))


def test_deleting_the_oldest_of_three_leaves_every_other_version_verifying(home, json_tree):
    h, _ = home
    names = []
    for n in range(3):
        edit(json_tree, n)
        build_home(json_tree, h)
        names.append(golden.promote(h, FP, keep=5).version.name)
    golden.remove_tree(golden.golden_root(h) / names[0])
    assert [v.name for v in golden.list_versions(h)] == names[1:]
    assert all(golden.verify_tree(v.path) == [] for v in golden.list_versions(h))


def test_retention_keeps_the_last_n_and_never_current(home, json_tree):
    h, _ = home
    names = []
    for n in range(4):
        edit(json_tree, n)
        build_home(json_tree, h)
        names.append(golden.promote(h, FP, keep=2).version.name)
    assert [v.name for v in golden.list_versions(h)] == names[-2:]
    assert golden.current_version(h).name == names[-1]


def test_a_damaged_current_is_replaced_not_kept_or_shared(home):
    h, _ = home
    v1 = golden.promote(h, FP).version
    target = next((v1.path / "export").glob("part-*.parquet"))
    os.chmod(target, 0o644)
    with open(target, "r+b") as fh:
        fh.seek(20)
        b = fh.read(1)
        fh.seek(20)
        fh.write(bytes([b[0] ^ 1]))
    p = golden.promote(h, FP)
    assert p.promoted and p.version.name != v1.name and p.bytes_linked == 0
    assert golden.verify_tree(p.version.path) == []


def test_a_changed_file_fails_verification_naming_it(home):
    h, _ = home
    v = golden.promote(h, FP).version
    target = v.path / "tables" / "source_files.parquet"
    os.chmod(target, 0o644)
    with open(target, "r+b") as fh:
        fh.seek(10)
        b = fh.read(1)
        fh.seek(10)
        fh.write(bytes([b[0] ^ 1]))
    failures = golden.verify_tree(v.path)
    assert len(failures) == 1 and str(target) in failures[0]


def test_verify_export_catches_a_vector_that_differs_from_the_cache(home, tmp_path):
    h, chunks = home
    v = golden.promote(h, FP).version
    copy = tmp_path / "copy"
    shutil.copytree(v.path, copy)
    shard = next((copy / "export").glob("part-*.parquet"))
    os.chmod(shard, 0o644)
    t = golden.read_shard(shard)
    mat = golden.embedding_matrix(t).copy()
    mat[0] = -mat[0]  # a damaged vector that still finds itself
    t = t.set_column(
        1, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(mat.ravel(), pa.float32()), mat.shape[1])
    )
    shard.write_bytes(golden.table_bytes(t))
    cache = EmbeddingCache(h, FP)
    assert golden.verify_export(copy, sample=len(chunks))["failures"] == []  # structure alone cannot tell
    failures = golden.verify_export(copy, sample=len(chunks), cache=cache)["failures"]
    assert failures == [
        f"chunk {t.column('id')[0].as_py()}: its vector differs from the embedding cache's "
        "vector of its content"
    ]


def test_an_empty_index_never_replaces_a_non_empty_current_without_the_override(home):
    from nova_pipeline.core.protect.guard import DeletionGuard
    from nova_pipeline.core.tables import write_table

    h, chunks = home
    v1 = golden.promote(h, FP).version
    get_collection(open_client(h), FP).delete(ids=chunks["chunk_id"].tolist())
    write_table(h, "source_chunks", chunks.iloc[:0])
    with pytest.raises(MassDeletionError, match="allow_mass_delete"):
        golden.promote(h, FP)
    assert golden.current_version(h).name == v1.name
    p = golden.promote(h, FP, guard=DeletionGuard(allow=True))
    assert p.promoted and p.version.count == 0 and golden.current_version(h).name == p.version.name


def test_a_crash_at_any_step_of_a_promotion_leaves_nothing_partial(home, json_tree, monkeypatch):
    h, _ = home
    first = golden.promote(h, FP).version
    edit(json_tree)
    build_home(json_tree, h)
    targets = [
        (promote_mod, "atomic_write_bytes"),
        (promote_mod, "fsync_dir"),
        (promote_mod.os, "rename"),
        (promote_mod.os, "link"),
        (promote_mod, "_write_file"),
        (promote_mod, "syncfs"),
        (promote_mod, "set_read_only"),
        (store_mod, "atomic_write_with"),  # the store pin of the new version
    ]
    crashes = 0
    for fail_at in range(1, 200):
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
        assert golden.current_version(h).name == first.name
        assert not any(p.name.startswith(golden.PARTIAL_PREFIX) for p in golden.golden_root(h).iterdir())
        assert golden.verify_tree(first.path) == []
    assert crashes >= 8  # every write, link, flush, rename and chmod step was hit once
    assert golden.current_version(h).name != first.name


def test_reset_rebuilds_a_deleted_index_without_embedding(home):
    h, chunks = home
    golden.promote(h, FP)
    with pytest.raises(ConfirmationRequired):
        golden.reset_index(h, None, False, "alice")
    golden.forget_cached_clients()
    shutil.rmtree(h / "vectors")
    golden.forget_cached_clients()
    entry = golden.reset_index(h, None, True, "alice")
    assert entry["outcome"] == "ok" and entry["details"]["count"] == len(chunks)
    assert existing_ids(get_collection(open_client(h), FP, create=False)) == set(chunks["chunk_id"])
    records = audit.read(h)
    assert [(r["who"], r["action"], r["outcome"]) for r in records] == [
        ("alice", "reset_index", "refused: confirm is not true"),
        ("alice", "reset_index", "ok"),
    ]


def test_reset_applies_only_the_difference(home):
    h, chunks = home
    golden.promote(h, FP)
    col = get_collection(open_client(h), FP)
    col.delete(ids=chunks["chunk_id"].iloc[:3].tolist())
    col.upsert(
        ids=["intruder"], embeddings=np.ones((1, 384), np.float32), documents=["x"], metadatas=[{"path": "x"}]
    )
    entry = golden.reset_index(h, None, True, "erin")
    assert (entry["details"]["upserted"], entry["details"]["deleted"]) == (3, 1)
    assert existing_ids(get_collection(open_client(h), FP, create=False)) == set(chunks["chunk_id"])


def test_reset_refuses_a_tampered_golden_copy(home):
    h, _ = home
    v = golden.promote(h, FP).version
    os.chmod(v.path / "model.json", 0o644)
    (v.path / "model.json").write_text("{}")
    with pytest.raises(GoldenCopyError, match="model.json"):
        golden.reset_index(h, None, True, "bob")


def test_runtime_copy_is_writable_follows_current_and_golden_is_untouched(home, json_tree):
    h, chunks = home
    v = golden.promote(h, FP).version
    rt = golden.make_runtime_copy(h)
    assert rt.path == str(h / "runtime" / "vectors") and os.access(rt.path, os.W_OK)
    assert (rt.upserted, rt.deleted, rt.count) == (len(chunks), 0, len(chunks))
    assert golden.runtime_version(h)["version"] == v.name
    assert golden.verify_tree(v.path) == []
    edit(json_tree)
    new_chunks = build_home(json_tree, h)
    v2 = golden.promote(h, FP).version
    rt2 = golden.make_runtime_copy(h)
    assert rt2.upserted == len(set(new_chunks["chunk_id"]) - set(chunks["chunk_id"])) < 5
    assert golden.runtime_version(h)["version"] == v2.name and not rt2.rebuilt


def test_a_first_runtime_copy_starts_as_a_file_copy_of_the_primary_made_exact_by_the_diff(home):
    """With the primary's data dir as its seed, a first runtime copy is its file copy (no HNSW build by
    upserts), then diffed against the whole version: a vector written to the primary after the export is
    deleted, one deleted since is upserted back, and another model's collection is not carried over."""
    from nova_pipeline.core.index.vector_store import collection_name, fresh_client

    h, chunks = home
    golden.promote(h, FP)
    gone = chunks["chunk_id"].iloc[0]
    with fresh_client(h) as client:
        col = get_collection(client, FP)
        col.upsert(ids=["stray"], embeddings=[[1.0] + [0.0] * 383], metadatas=[{"path": "x.py"}])
        col.delete(ids=[gone])
        other = get_collection(client, "another-model")
        other.upsert(ids=["o"], embeddings=[[0.0, 1.0] + [0.0] * 382], metadatas=[{"path": "x.py"}])
    rt = golden.make_runtime_copy(h, seed=h / "vectors")
    assert rt.seeded and (rt.upserted, rt.deleted, rt.count) == (1, 1, len(chunks)) and not rt.rebuilt
    assert runtime_ids(h) == set(chunks["chunk_id"])
    with fresh_client(h, path=golden.runtime_dir(h)) as client:
        assert [c.name for c in client.list_collections()] == [collection_name(FP)]
    with fresh_client(h) as client:  # the primary is as it was
        assert {"stray"} <= existing_ids(get_collection(client, FP)) and len(client.list_collections()) == 2
    # a copy that exists is followed by its diff, never copied again
    assert not golden.make_runtime_copy(h, force=True, seed=h / "vectors").seeded


def runtime_ids(h) -> set[str]:
    from nova_pipeline.core.index.vector_store import fresh_client

    with fresh_client(h, path=golden.runtime_dir(h)) as client:
        return existing_ids(get_collection(client, FP, create=False))


def test_the_runtime_copy_follows_by_export_shard_without_listing_its_collection(
    home, json_tree, monkeypatch
):
    """The copy holds the version its record names, so the next one is applied as a diff of the changed
    export shards (read from both versions) and the collection is never listed; a deleted file's chunks go."""
    from nova_pipeline.core.protect.golden import export as export_mod

    h, chunks = home
    golden.promote(h, FP)
    golden.make_runtime_copy(h)
    listed, read = [], set()
    monkeypatch.setattr(export_mod, "existing_ids", lambda col, *a: listed.append(col) or set())
    real_read = export_mod.read_shard
    monkeypatch.setattr(export_mod, "read_shard", lambda f, *a: read.add(f.name) or real_read(f, *a))
    edit(json_tree)
    gone = sorted(json_tree.rglob("*.py"))[-1]
    gone.unlink()
    new_chunks = build_home(json_tree, h)
    golden.promote(h, FP)
    rt = golden.make_runtime_copy(h)
    assert listed == [] and not rt.rebuilt
    assert 1 <= len(read) <= 2  # the shards of the edited and the deleted file, of the 64
    removed = set(chunks["chunk_id"]) - set(new_chunks["chunk_id"])
    rel = gone.relative_to(json_tree).as_posix()
    assert rt.deleted == len(removed) >= len(chunks[chunks["path"] == rel]) > 0
    monkeypatch.undo()
    assert runtime_ids(h) == set(new_chunks["chunk_id"]) and rt.count == len(new_chunks)


@pytest.mark.integration
def test_server_mode_exports_and_refills_an_empty_server(json_tree, tmp_path, chroma_server, fake_embedder):
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer
    from nova_pipeline.core.index.reconcile import reconcile
    from nova_pipeline.core.ingest.manifest import scan
    from nova_pipeline.core.ingest.walk import ScanOptions
    from nova_pipeline.core.tables import write_table

    h = tmp_path / "home"
    tok = Tokenizer()
    chunks, _ = chunk_manifest(
        json_tree, scan(ScanOptions(json_tree)).manifest, None, tok.count, tok.max_seq_length
    )
    write_table(h, "source_chunks", chunks)
    col = get_collection(open_client(h, chroma_server), FP)
    reconcile(col, chunks, fake_embedder, EmbeddingCache(h, FP))
    v = golden.promote(h, FP, chroma_url=chroma_server).version
    assert golden.export_files(v.path) and json.loads((v.path / "model.json").read_text())["mode"] == "server"
    assert v.count == len(chunks) and golden.verify_tree(v.path) == []
    # the server comes back empty
    open_client(h, chroma_server).delete_collection(col.name)
    entry = golden.reset_index(h, chroma_server, True, "dave")
    assert entry["details"]["upserted"] == len(chunks)
    assert existing_ids(get_collection(open_client(h, chroma_server), FP, create=False)) == set(
        chunks["chunk_id"]
    )


def test_names_stay_in_creation_order_when_retention_frees_one(home, json_tree, monkeypatch):
    h, _ = home
    monkeypatch.setattr(
        versions_mod.time, "strftime", lambda fmt, t=None: "20260101T000000Z"
    )  # all in one second
    names = []
    for n in range(5):
        edit(json_tree, n)
        build_home(json_tree, h)
        names.append(golden.promote(h, FP, keep=2).version.name)
    assert names == ["20260101T000000Z"] + [f"20260101T000000Z-{i}" for i in range(2, 6)]
    assert [v.name for v in golden.list_versions(h)] == names[-2:]
    assert golden.current_version(h).name == names[-1]


def test_the_golden_copy_holds_the_lexical_index_and_reset_brings_it_back(home):
    h, chunks = home
    p = golden.promote(h, FP)
    v = p.version.path
    assert (v / "lexical" / "meta.json").exists()
    assert golden.verify_export(v)["failures"] == []
    assert json.loads((v / "model.json").read_text())["lexical"] == lexical.current_path(h).name
    # the live index is lost: reset installs the golden one, with exactly the chunks of the export
    shutil.rmtree(h / "lexical")
    entry = golden.reset_index(h, None, True, "alice")
    assert entry["details"]["lexical"] == f"{len(chunks)} documents, installed"
    assert lexical_delta.id_failures(lexical.current_path(h), chunks["chunk_id"], None) == []
    assert lexical.load_current(h).search("JSONDecoder", 1)


def test_a_golden_version_without_a_lexical_index_rebuilds_it_from_the_export(home):
    h, chunks = home
    shutil.rmtree(h / "lexical")  # as before lexical indexes existed
    v = golden.promote(h, FP).version.path
    assert not (v / "lexical").exists()
    entry = golden.reset_index(h, None, True, "alice")
    assert entry["details"]["lexical"] == f"{len(chunks)} documents, rebuilt from the export"
    live = lexical.current_path(h)
    assert live.name == lexical.chunks_digest(chunks)  # the same index the rebuild job would make
    # the next promotion adds it: the content key includes the lexical digest
    p = golden.promote(h, FP)
    assert p.promoted and (p.version.path / "lexical" / "meta.json").exists()


def test_each_golden_version_pins_its_store_objects_and_retention_unpins_them(home, json_tree):
    from nova_pipeline.core.compression.store import ContentStore

    h, _ = home
    names = []
    for n in range(3):
        edit(json_tree, n)
        build_home(json_tree, h)
        names.append(golden.promote(h, FP, keep=2).version.name)
    pins = ContentStore(h).pins()
    assert pins == [f"golden-{n}" for n in names[1:]]  # the first was dropped by retention, and unpinned
    kept = golden.list_versions(h)[0]
    # what the kept older version refers to survives a store update that no longer holds it
    keys = set(pd.read_parquet(kept.path / "store_index.parquet")["key"])
    store = ContentStore(h)
    store.commit_index(store.index().iloc[0:0])
    store.collect_garbage()
    assert store.verify(sorted(keys)) == []


def test_promote_repairs_the_pins_missing_versions_and_stale_pins(home, json_tree):
    from nova_pipeline.core.compression.store import ContentStore

    h, _ = home
    first = golden.promote(h, FP).version
    store = ContentStore(h)
    store.unpin(f"golden-{first.name}")  # a home from before pins
    store.pin("golden-20000101T000000Z", store.index())  # a pin whose version never got committed
    edit(json_tree)
    build_home(json_tree, h)
    second = golden.promote(h, FP).version
    assert store.pins() == [f"golden-{first.name}", f"golden-{second.name}"]
    assert golden.sync_pins(h) == {"pinned": 0, "unpinned": 0}

"""nova watch's recent writes (core/index/recent_writes): records fold in order, a missing or foreign record
breaks the chain, and an older view with the records folded over it answers as a view of the new state."""

import io
import uuid

import chromadb
import numpy as np
import pytest

from nova_pipeline.core.errors import VectorStoreError
from nova_pipeline.core.index import recent_writes
from nova_pipeline.core.index.recent_writes import Overlaid, chain, matches, record, store_key

DIM = 16


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def meta(path: str, language: str = "python") -> dict:
    return {"path": path, "language": language, "bucket": 0}


def put(home, before, after, added=(), removed=(), collection="c"):
    ids = [a for a, _ in added]
    vecs = np.stack([unit(s) for _, s in added]) if added else np.zeros((0, DIM), np.float32)
    record(home, before, after, collection, ids, vecs, [meta(f"{i}.py") for i in ids], list(removed))


def test_records_fold_in_order_and_a_missing_or_foreign_record_breaks_the_chain(tmp_path, monkeypatch):
    put(tmp_path, "g0", "g1", added=[("a", 1), ("b", 2)])
    put(tmp_path, "g1", "g2", added=[("c", 3), ("a", 4)], removed=["b", "x"])
    put(tmp_path, "g2", "g3", removed=["c"], collection="other")

    both = chain(tmp_path, "g0", "g2", "c")
    assert set(both.ids) == {"a", "c"} and both.touched == {"a", "b", "c", "x"}
    a = both.vectors[both.ids.index("a")]
    assert np.allclose(a, unit(4))  # the later upsert wins
    assert both.metadatas[both.ids.index("c")] == meta("c.py")
    assert chain(tmp_path, "g1", "g2", "c").touched == {"a", "b", "c", "x"}
    assert chain(tmp_path, "g2", "g2", "c").touched == frozenset()  # nothing to fold
    assert chain(tmp_path, "g0", "g3", "c") is None  # a record of another collection
    assert chain(tmp_path, "g0", "g9", "c") is None  # no record of a hold on the way (another writer)
    monkeypatch.setattr(recent_writes, "MAX_OVERLAY", 1)
    assert chain(tmp_path, "g0", "g2", "c") is None  # too much to fold: a fresh view is cheaper
    put(tmp_path, "g1", "g2", added=[("c", 3), ("a", 4)])  # a burst leaves no record
    assert not (tmp_path / "vectors.writes" / "g1.npz").exists() and chain(tmp_path, "g1", "g2", "c") is None


def test_a_record_names_its_data_dir_so_the_runtime_copys_reader_never_folds_the_primarys_writes(tmp_path):
    class Col:
        name = "chunks-fake-slim"

    primary = store_key(tmp_path, tmp_path / "vectors", Col)
    assert primary == "vectors:chunks-fake-slim"
    assert store_key(tmp_path, tmp_path / "runtime" / "vectors", Col) != primary
    put(tmp_path, "g0", "g1", added=[("a", 1)], collection=primary)
    assert chain(tmp_path, "g0", "g1", store_key(tmp_path, tmp_path / "runtime" / "vectors", Col)) is None


def test_a_damaged_record_breaks_the_chain_with_a_warning(tmp_path, caplog):
    put(tmp_path, "g0", "g1", added=[("a", 1)])
    put(tmp_path, "g1", "g2", added=[("b", 2)])
    record_file = tmp_path / "vectors.writes" / "g1.npz"
    whole = record_file.read_bytes()
    for damaged in (b"", b"garbage", whole[:40], whole[:-30]):
        record_file.write_bytes(damaged)
        assert chain(tmp_path, "g0", "g2", "c") is None
    assert "g1.npz cannot be read" in caplog.text
    np.savez(record_file, **{**dict(np.load(io.BytesIO(whole))), "metadatas": np.array("[]")})
    assert chain(tmp_path, "g0", "g2", "c") is None and "g1.npz is inconsistent" in caplog.text
    record_file.write_bytes(whole)
    assert chain(tmp_path, "g0", "g2", "c").ids == ["a", "b"]


def test_the_writer_keeps_only_the_newest_records(tmp_path, monkeypatch):
    monkeypatch.setattr(recent_writes, "KEEP", 3)
    for i in range(6):
        put(tmp_path, f"g{i}", f"g{i + 1}", added=[(f"id{i}", i)])
    assert sorted(p.stem for p in (tmp_path / "vectors.writes").glob("*.npz")) == ["g3", "g4", "g5"]
    assert chain(tmp_path, "g0", "g6", "c") is None and chain(tmp_path, "g3", "g6", "c") is not None


def test_the_filters_searches_use_are_decided_and_others_refused():
    m = meta("json/decoder.py")
    assert matches(m, None) and matches(m, {"language": {"$eq": "python"}})
    assert matches(m, {"$and": [{"language": "python"}, {"path": {"$in": ["json/decoder.py"]}}]})
    assert not matches(m, {"path": {"$in": ["json/encoder.py"]}})
    assert not matches(m, {"$or": [{"language": {"$ne": "python"}}, {"path": {"$nin": ["json/decoder.py"]}}]})
    with pytest.raises(VectorStoreError, match=r"\$gt"):
        matches(m, {"bucket": {"$gt": 1}})


def test_an_older_view_with_the_records_folded_answers_as_a_view_of_the_new_state(tmp_path):
    client = chromadb.EphemeralClient()
    old, new = (
        client.create_collection(f"{name}-{uuid.uuid4().hex}", configuration={"hnsw": {"space": "cosine"}})
        for name in ("old", "new")
    )
    base = {f"b{i}": i for i in range(60)}
    for col in (old, new):
        col.add(
            ids=list(base),
            embeddings=np.stack([unit(s) for s in base.values()]),
            metadatas=[meta(f"{i}.py", "python" if s % 2 else "markdown") for i, s in base.items()],
        )
    # the writes a view opened before them does not see: two deleted, one re-embedded, two added
    removed, added = ["b1", "b2"], [("b3", 1003), ("n1", 1001), ("n2", 1002)]
    new.delete(ids=removed)
    new.upsert(
        ids=[a for a, _ in added],
        embeddings=np.stack([unit(s) for _, s in added]),
        metadatas=[meta(f"{a}.py") for a, _ in added],
    )
    put(tmp_path, "g0", "g1", added=added, removed=removed)
    view = Overlaid(old, chain(tmp_path, "g0", "g1", "c"))

    queries = np.stack([unit(s) for s in (1001, 1, 2, 3, 1003, 7, 500, 501)])
    for where in (None, {"language": {"$eq": "python"}}, {"path": {"$in": ["n2.py", "b5.py", "b2.py"]}}):
        got = view.query(query_embeddings=queries, n_results=5, where=where)
        want = new.query(
            query_embeddings=queries, n_results=5, where=where, include=["metadatas", "distances"]
        )
        assert got["ids"] == want["ids"]
        assert np.allclose(got["distances"], want["distances"], atol=1e-5)
        assert got["metadatas"] == want["metadatas"]
    first = view.query(query_embeddings=queries[:1], n_results=1)
    assert first["ids"] == [["n1"]] and first["distances"][0][0] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(VectorStoreError):
        view.query(query_embeddings=queries[:1], n_results=1, include=["embeddings"])

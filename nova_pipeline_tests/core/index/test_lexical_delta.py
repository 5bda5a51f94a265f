"""Live deltas of the lexical index: a built base plus the difference to the live chunks answers like an
index built from the live chunks."""

import pandas as pd
import pytest

from nova_pipeline.core.index import lexical, lexical_delta
from nova_pipeline.core.index.chunking import chunk_manifest
from nova_pipeline.core.index.embedding import Tokenizer
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions


@pytest.fixture
def chunks(json_tree):
    tok = Tokenizer()
    manifest = scan(ScanOptions(json_tree)).manifest
    df, _ = chunk_manifest(json_tree, manifest, None, tok.count, tok.max_seq_length)
    return df


def edited(chunks):
    """The live chunks after an edit: scanner.py's chunks gone, one chunk of decoder.py changed (a new
    identifier), one new file."""
    live = chunks[chunks["path"] != "json/scanner.py"].copy()
    i = live.index[(live["path"] == "json/decoder.py")][3]
    live.loc[i, "text"] = live.loc[i, "text"] + "\ndef frobnicate_widget_xyz(): pass\n"
    live.loc[i, "chunk_id"] = "changed-" + live.loc[i, "chunk_id"]
    new = live.iloc[[0]].copy()
    new["chunk_id"], new["path"], new["text"] = "new-1", "json/extra.py", "def quux_handler(): return 'zebra'"
    return pd.concat([live, new], ignore_index=True), i


def test_a_base_with_its_delta_answers_like_an_index_of_the_live_chunks(chunks, tmp_path):
    home = tmp_path / "home"
    lexical.update(home, chunks)
    base = lexical.load_current(home)
    assert base.meta["avgdl"] > 1
    live, changed_row = edited(chunks)
    delta = lexical_delta.compute(base.ids, live, base.digest)
    assert delta.removed == set(chunks[chunks["path"] == "json/scanner.py"]["chunk_id"]) | {
        chunks.loc[changed_row, "chunk_id"]
    }
    assert sorted(delta.added["chunk_id"]) == sorted(
        ["new-1", "changed-" + chunks.loc[changed_row, "chunk_id"]]
    )
    lexical_delta.write(home, delta)
    idx = lexical_delta.load_live(home)
    assert isinstance(idx, lexical_delta.LiveLexicalIndex)
    fresh_dir = tmp_path / "fresh"
    lexical.build(live, fresh_dir)
    fresh = lexical.load(fresh_dir)

    def top(index, q, k=5):
        return [index.ids[h.row] for h in index.search(q, k)]

    for q in ("frobnicate_widget_xyz", "quux_handler zebra"):
        assert top(idx, q, 1) == top(fresh, q, 1)  # the new and the changed chunks are found
    assert "frobnicate_widget_xyz" in idx.search("frobnicate_widget_xyz", 1)[0].matched
    for q in ("JSONDecodeError", "encode_basestring_ascii", "object_pairs_hook", "parse object pairs hook"):
        live_ids = top(idx, q, 10)
        assert not set(live_ids) & delta.removed  # removed chunks never come back
        # the base's documents keep the base's scores until it is compacted: its ranking minus the removed
        assert live_ids == [i for i in top(base, q, 30) if i not in delta.removed][:10], q
        assert len(set(live_ids[:5]) & set(top(fresh, q, 5))) >= 3, q  # near ties may swap with a rebuild
    scanner = idx.mask("json/scanner.py")
    assert idx.search("py_make_scanner", 5, scanner) == []  # its only file is gone
    row = idx.row_of("new-1")
    assert (
        row >= idx.base_size
        and idx.path_of(row) == "json/extra.py"
        and idx.symbols[row] == live.iloc[-1]["symbol"]
    )
    assert len(idx) == idx.base_size + 2
    # the live index reuses the base's arrays and converts only the added rows: the same as making every
    # array of its whole document table again
    whole = lexical.LexicalIndex(base.path, base.retriever, idx.docs, base.meta, base.texts)
    for name in ("ids", "symbols", "starts", "ends", "_paths", "_languages", "_text_shard", "_text_row"):
        assert getattr(idx, name).tolist() == getattr(whole, name).tolist(), name
    assert all(idx.row_of(i) == whole.row_of(i) for i in [*whole.ids, "no-such-id"])
    # extra.py is new; scanner.py's rows stay in the base, masked
    assert idx.distinct_paths == whole.distinct_paths == base.distinct_paths + 1


def test_a_delta_is_ignored_for_another_base_and_cleared_by_a_rebuild(chunks, tmp_path):
    home = tmp_path / "home"
    lexical.update(home, chunks)
    base = lexical.load_current(home)
    live, _ = edited(chunks)
    lexical_delta.write(home, lexical_delta.compute(base.ids, live, "another-base"))
    assert type(lexical_delta.load_live(home)) is lexical.LexicalIndex  # not for this base
    lexical_delta.write(home, lexical_delta.compute(base.ids, live, base.digest))
    stamp = lexical_delta.delta_stamp(home)
    assert stamp is not None
    lexical.update(home, live)  # a rebuild: CURRENT holds every chunk now
    assert lexical_delta.delta_stamp(home) is None and lexical_delta.read(home) is None
    lexical_delta.write(home, lexical_delta.compute(lexical.load_current(home).ids, live, "x"))
    lexical.update(home, live)  # unchanged: no build, and the delta goes too
    assert lexical_delta.read(home) is None
    empty = lexical_delta.compute(lexical.load_current(home).ids, live, lexical.load_current(home).digest)
    assert empty.empty
    lexical_delta.write(home, empty)
    assert lexical_delta.delta_stamp(home) is None  # an empty delta is no file


def test_an_unreadable_delta_leaves_the_base_answering(chunks, tmp_path):
    home = tmp_path / "home"
    lexical.update(home, chunks)
    (home / "lexical" / lexical_delta.DELTA).write_text("{half")
    assert lexical_delta.read(home) is None
    assert type(lexical_delta.load_live(home)) is lexical.LexicalIndex


def test_the_document_table_gives_each_live_chunk_by_id_and_none_that_is_gone(chunks, tmp_path):
    home = tmp_path / "home"
    lexical.update(home, chunks)
    base = lexical.load_current(home)
    assert (base.path / lexical.TEXTS / "part-00.arrow").is_file()
    some = chunks.sample(20, random_state=3)
    got = base.documents([*some["chunk_id"], "no-such-id"])
    assert set(got) == set(some["chunk_id"])  # an unknown id is left out
    for row in some.itertuples():
        d = got[row.chunk_id]
        assert (d.path, d.start_line, d.end_line, d.text) == (
            row.path,
            row.start_line,
            row.end_line,
            row.text,
        )
        assert d.symbol == (row.symbol or "") and d.language == row.language

    live, changed_row = edited(chunks)
    lexical_delta.write(home, lexical_delta.compute(base.ids, live, base.digest))
    idx = lexical_delta.load_live(home, base=base)
    gone = chunks.loc[changed_row, "chunk_id"]
    scanner = chunks[chunks["path"] == "json/scanner.py"]["chunk_id"].tolist()
    kept = live[live["path"] == "json/encoder.py"]["chunk_id"].tolist()[:3]
    docs = idx.documents(["new-1", "changed-" + gone, gone, *scanner, *kept])
    assert set(docs) == {"new-1", "changed-" + gone, *kept}  # removed and changed base chunks are gone
    assert (
        docs["new-1"].text == "def quux_handler(): return 'zebra'" and docs["new-1"].path == "json/extra.py"
    )
    assert docs["changed-" + gone].text.endswith("def frobnicate_widget_xyz(): pass\n")
    by_id = live.set_index("chunk_id")
    assert all(docs[i].text == by_id.loc[i, "text"] for i in kept)


def test_an_index_without_texts_still_answers_and_a_damaged_texts_file_is_named(chunks, tmp_path):
    import shutil

    lexical.build(chunks, tmp_path / "idx")
    shutil.rmtree(tmp_path / "idx" / lexical.TEXTS)  # built before the document table held texts
    old = lexical.load(tmp_path / "idx")
    cid = chunks["chunk_id"].iloc[0]
    assert old.documents([cid])[cid].text is None and old.search("JSONDecodeError", 3)
    lexical.build(chunks, tmp_path / "idx2")
    lexical.build(chunks.iloc[:5], tmp_path / "short")
    shard = lexical.text_shard(chunks["path"].iloc[-1])
    name = f"part-{shard:02d}.arrow"
    short = (tmp_path / "short" / lexical.TEXTS / name).read_bytes()
    (tmp_path / "idx2" / lexical.TEXTS / name).write_bytes(short)
    with pytest.raises(lexical.LexicalIndexError, match=f"texts shard {shard}"):
        lexical.load(tmp_path / "idx2")


def test_the_same_texts_give_the_same_shard_files_and_an_edit_changes_one(chunks, tmp_path):
    lexical.build(chunks, tmp_path / "a")
    lexical.build(chunks.copy(), tmp_path / "b")
    edited_chunks = chunks.copy()
    i = edited_chunks.index[edited_chunks["path"] == "json/decoder.py"][0]
    edited_chunks.loc[i, "text"] += "\n# edited\n"
    lexical.build(edited_chunks, tmp_path / "c")

    def shards(d):
        return {f.name: f.read_bytes() for f in sorted((tmp_path / d / lexical.TEXTS).iterdir())}

    a, b, c = shards("a"), shards("b"), shards("c")
    assert a == b and len(a) == lexical.TEXT_SHARDS
    assert [n for n in a if a[n] != c[n]] == [f"part-{lexical.text_shard('json/decoder.py'):02d}.arrow"]

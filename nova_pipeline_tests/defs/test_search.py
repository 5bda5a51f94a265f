"""Hybrid search on a tree built by the rebuild graph: the lexical index as an asset, modes, why each hit
matched, filters in every mode, and the chunker version that re-chunks (but does not re-embed)."""

import itertools

import dagster as dg
import pytest

from nova_pipeline.core.index import lexical
from nova_pipeline.core.index.ranking import MERGE_GAP, MODES
from nova_pipeline.core.protect import golden
from nova_pipeline.core.serving.searcher import Searcher
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import read_table
from nova_pipeline_tests.conftest import FakeEmbedder, asset_metadata, materialize_rebuild


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import shutil

    from nova_pipeline_tests.conftest import STDLIB

    root = tmp_path_factory.mktemp("search")
    src, home = root / "src", root / "home"
    shutil.copytree(STDLIB / "json", src / "json", ignore=shutil.ignore_patterns("__pycache__"))
    with dg.instance_for_test() as instance:
        first = materialize_rebuild(src, home, instance)
        again = materialize_rebuild(src, home, instance)
    return home, first, again


@pytest.fixture(scope="module")
def searcher(built):
    s = Searcher(Settings.build(None, built[0], require_source=False), FakeEmbedder())
    yield s
    s.close()


def test_the_lexical_index_is_an_asset_checked_against_the_chunks_and_idle_when_unchanged(built):
    home, first, again = built
    chunks = read_table(home, "source_chunks")
    m = asset_metadata(first, "lexical_index")
    assert m["built"] is True and m["documents"] == len(chunks) and m["vocabulary"] > 100
    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks["lexical_index_matches_chunks"]
    m2 = asset_metadata(again, "lexical_index")
    assert m2["built"] is False and m2["digest"] == m["digest"]
    assert asset_metadata(again, "golden_copy")["promoted"] is False
    assert (golden.current_version(home).path / "lexical" / "meta.json").exists()


def test_an_edit_is_a_lexical_delta_that_the_golden_copy_carries_and_a_reset_restores(tmp_path, monkeypatch):
    """After an edit, the rebuild job writes a delta against the built base (only the changed chunks'
    texts read); its check, search, the golden copy (linking the base) and a reset all see base + delta; a
    rerun does no work, not even its check's pass over the ids (the edit's run kept the answer);
    ``compact_above: 0`` folds the delta into a new base."""
    import shutil

    from nova_pipeline.core.index import lexical_delta
    from nova_pipeline_tests.conftest import STDLIB

    src, home = tmp_path / "src", tmp_path / "home"
    shutil.copytree(STDLIB / "json", src / "json", ignore=shutil.ignore_patterns("__pycache__"))
    with dg.instance_for_test() as instance:
        first = materialize_rebuild(src, home, instance)
        base = asset_metadata(first, "lexical_index")["digest"]
        p = src / "json" / "decoder.py"
        p.write_text(p.read_text() + "\n\ndef zorblax_delta_probe():\n    return 1\n")
        digests, real = [], lexical.chunks_digest
        with monkeypatch.context() as mp:  # once for the new table: its memo, read by every asset after
            mp.setattr(lexical, "chunks_digest", lambda c: digests.append(len(c)) or real(c))
            edited = materialize_rebuild(src, home, instance)
        assert len(digests) == 1
        m = asset_metadata(edited, "lexical_index")
        chunks = read_table(home, "source_chunks")
        assert (m["how"], m["base"], m["documents"]) == ("delta", base, len(chunks)) and m["delta_added"] >= 1
        assert lexical.current_path(home).name == base and m["digest"] == lexical.chunks_digest(chunks)
        assert {e.check_name: e.passed for e in edited.get_asset_check_evaluations()}[
            "lexical_index_matches_chunks"
        ]
        live = lexical_delta.load_live(home)
        assert live.path_of(live.search("zorblax_delta_probe", 1)[0].row) == "json/decoder.py"
        v = golden.current_version(home)
        assert asset_metadata(edited, "golden_copy")["promoted"] and (v.path / golden.LEXICAL_DELTA).exists()
        assert asset_metadata(edited, "golden_copy")["files_linked"] >= len(
            list((v.path / "lexical").rglob("*.*"))
        )
        with monkeypatch.context() as mp:
            mp.setattr(
                lexical_delta, "live_id_failures", lambda *a: pytest.fail("the ids were checked again")
            )
            again = materialize_rebuild(src, home, instance)
        assert asset_metadata(again, "lexical_index")["how"] == "unchanged"
        assert asset_metadata(again, "lexical_index")["documents"] == len(chunks)
        assert {e.check_name: e.passed for e in again.get_asset_check_evaluations()}[
            "lexical_index_matches_chunks"
        ]
        assert asset_metadata(again, "golden_copy")["promoted"] is False
        lexical_delta.clear(home)  # lost: a reset brings base and delta back from the golden copy
        golden.reset_index(home, None, True, "test")
        assert lexical_delta.read(home).digest == m["digest"] and not lexical_delta.live_id_failures(
            home, chunks["chunk_id"].tolist()
        )
        compacted = materialize_rebuild(
            src, home, instance, run_config={"ops": {"lexical_index": {"config": {"compact_above": 0}}}}
        )
        assert asset_metadata(compacted, "lexical_index")["how"] == "built"
        assert lexical.current_path(home).name == m["digest"] and lexical_delta.read(home) is None


def test_hybrid_says_why_each_hit_matched_and_puts_the_exact_symbol_first(searcher):
    r = searcher.search("JSONDecodeError", 5)
    assert r.mode == "hybrid" and r.store == "primary"
    top = r.hits[0]
    assert top.symbol.startswith("class JSONDecodeError") and top.exact
    assert top.lexical_score > 0 and "jsondecodeerror" in top.matched_terms
    assert all(h.text for h in r.hits)  # hits found by the lexical side only get their text from Chroma
    scores = [h.score for h in r.hits]
    assert scores == sorted(scores, reverse=True)


def test_each_mode_ranks_by_its_own_score(searcher):
    lex = searcher.search("JSONDecodeError", 5, mode="lexical").hits
    assert lex and all(h.vector_score is None and h.lexical_score == h.score for h in lex)
    assert "JSONDecodeError" in lex[0].text
    vec = searcher.search("JSONDecodeError", 5, mode="vector").hits
    assert len(vec) == 5 and all(h.lexical_score is None and h.vector_score == h.score for h in vec)
    with pytest.raises(ValueError, match="unknown search mode"):
        searcher.search("x", 5, mode="fuzzy")


@pytest.mark.parametrize("mode", MODES)
def test_path_and_language_filters_apply_in_every_mode(searcher, mode):
    hits = searcher.search("decode a document", 10, mode=mode, path="json/enc*").hits
    assert hits and {h.path for h in hits} == {"json/encoder.py"}
    assert searcher.search("decode", 10, mode=mode, language="markdown").hits == []
    only_py = searcher.search("load json", 10, mode=mode, language="python", path="*/tool.py").hits
    assert only_py and {(h.path, h.language) for h in only_py} == {("json/tool.py", "python")}
    assert searcher.search("decode", 10, mode=mode, path="nothing/*").hits == []


def test_lexical_mode_without_a_lexical_index_says_to_rebuild(tmp_path):
    from nova_pipeline.core.errors import IndexNotBuiltError

    s = Searcher(Settings.build(None, tmp_path, require_source=False), FakeEmbedder())
    try:
        with pytest.raises(IndexNotBuiltError, match="rebuild"):
            s.search("decode", 3, mode="lexical")
    finally:
        s.close()


def test_a_new_chunker_version_re_chunks_every_file_but_re_embeds_only_changed_texts(
    json_tree, tmp_path, monkeypatch
):
    from nova_pipeline.core.index import chunking
    from nova_pipeline.defs.index import chunks as chunks_defs

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
        monkeypatch.setattr(chunks_defs, "CHUNKER_VERSION", "test-next")
        monkeypatch.setattr(chunking, "CHUNKER_VERSION", "test-next")
        again = materialize_rebuild(json_tree, home, instance)
    chunks = asset_metadata(again, "source_chunks")
    assert chunks["files_reused"] == 0 and chunks["files_chunked"] > 0 and chunks["chunker"] == "test-next"
    assert asset_metadata(again, "vector_index")["embedded"] == 0  # same texts: every vector from the cache
    assert lexical.current_path(home) is not None


def test_slices_of_one_function_come_back_as_one_hit_and_k_counts_places(searcher):
    raw = searcher.search("JSONObject", 5, collapse=False).hits  # every slice of it is an exact match
    slices = [h for h in raw if h.symbol == "def JSONObject"]
    assert len(slices) >= 2 and all(not h.merged for h in raw)
    hits = searcher.search("JSONObject", 5).hits
    assert len(hits) == 5
    for a, b in itertools.combinations(hits, 2):  # no two hits are neighbouring slices of one symbol
        if a.symbol and (a.path, a.symbol) == (b.path, b.symbol):
            assert a.start_line > b.end_line + 1 + MERGE_GAP or b.start_line > a.end_line + 1 + MERGE_GAP
    top = hits[0]
    assert top.symbol == "def JSONObject" and len(top.merged) >= len(slices) - 1
    assert top.start_line <= min(h.start_line for h in slices)
    assert top.end_line >= max(h.end_line for h in slices)
    assert top.score == max(h.score for h in slices)  # the best slice's score
    ids = [h.chunk_id for h in hits] + [m for h in hits for m in h.merged]
    assert len(ids) == len(set(ids))  # no chunk in two places


@pytest.fixture(scope="module")
def real_searcher(tmp_path_factory):
    """The json package indexed with the real all-MiniLM-L6-v2 (the ranking a user sees)."""
    import shutil

    from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder
    from nova_pipeline_tests.conftest import STDLIB, build_home

    root = tmp_path_factory.mktemp("real")
    shutil.copytree(STDLIB / "json", root / "src" / "json", ignore=shutil.ignore_patterns("__pycache__"))
    embedder = SentenceTransformerEmbedder()
    build_home(root / "src", root / "home", embedder)
    s = Searcher(Settings.build(None, root / "home", require_source=False), embedder)
    yield s
    s.close()


def test_an_error_message_finds_its_raise_site_above_docstrings_that_quote_it(real_searcher):
    hits = real_searcher.search("Expecting property name enclosed in double quotes", 5).hits
    assert hits[0].path == "json/decoder.py", [(h.path, h.start_line) for h in hits]
    assert "Expecting property name enclosed in double quotes" in hits[0].text
    quoting = [n for n, h in enumerate(hits) if h.path in ("json/tool.py", "json/__init__.py")]
    assert all(n > 0 for n in quoting)


def test_a_record_schema_change_is_built_beside_copied_not_embedded_and_switched_to(tmp_path, monkeypatch):
    """Full records (NOVA_CHROMA_DOCUMENTS=1, as every collection was before slim records), then the
    default: the rebuild builds the slim collection beside the full one from its vectors, with no text
    embedded, switches readers to it and drops the full one; search answers the same, texts included."""
    import shutil

    from nova_pipeline.core.index.vector_store import FULL, SLIM, collection_name, open_client
    from nova_pipeline.core.layout import Layout
    from nova_pipeline_tests.conftest import STDLIB, fake_embedder_resource

    src, home = tmp_path / "src", tmp_path / "home"
    shutil.copytree(STDLIB / "json", src / "json", ignore=shutil.ignore_patterns("__pycache__"))
    model = FakeEmbedder()
    monkeypatch.setenv("NOVA_CHROMA_DOCUMENTS", "1")
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(src, home, instance, embedder=fake_embedder_resource(model)).success
        before = Searcher(Settings.build(None, home, require_source=False), FakeEmbedder())
        want = [(h.chunk_id, h.start_line, h.text) for h in before.search("decode a JSON document", 5).hits]
        before.close()
        names = {c.name for c in open_client(home).list_collections()}
        assert names == {collection_name(FakeEmbedder.fingerprint, FULL)}
        embedded = model.texts
        # no cache to help: every vector must come from the full collection
        for f in Layout.of(home).embedding_cache(FakeEmbedder.fingerprint).parent.iterdir():
            f.unlink()
        monkeypatch.delenv("NOVA_CHROMA_DOCUMENTS")
        second = materialize_rebuild(src, home, instance, embedder=fake_embedder_resource(model))
    assert second.success and model.texts == embedded  # every vector copied from the full collection
    m = asset_metadata(second, "vector_index")
    assert m["embedded"] == 0 and m["copied"] == m["vectors"] > 0
    names = {c.name for c in open_client(home).list_collections()}
    assert names == {collection_name(FakeEmbedder.fingerprint, SLIM)}
    after = Searcher(Settings.build(None, home, require_source=False), FakeEmbedder())
    got = [(h.chunk_id, h.start_line, h.text) for h in after.search("decode a JSON document", 5).hits]
    after.close()
    assert got == want and all(text for _, _, text in got)


def test_an_unchanged_lexical_index_is_still_checked_when_its_files_change_behind_its_back(tmp_path):
    """An unchanged run answers the check from the answer kept for the same chunks table and index files;
    a delta written behind its back (naming the right digest, but removing a chunk) is a new file, so the
    check runs again and fails naming the chunk."""
    import shutil

    from nova_pipeline.core.index import lexical_delta
    from nova_pipeline_tests.conftest import STDLIB

    src, home = tmp_path / "src", tmp_path / "home"
    shutil.copytree(STDLIB / "json", src / "json", ignore=shutil.ignore_patterns("__pycache__"))

    def lexical_check(result):
        return {e.check_name: e for e in result.get_asset_check_evaluations()}["lexical_index_matches_chunks"]

    with dg.instance_for_test() as instance:
        materialize_rebuild(src, home, instance)
        again = materialize_rebuild(src, home, instance)
        assert asset_metadata(again, "lexical_index")["how"] == "unchanged" and lexical_check(again).passed
        chunks = read_table(home, "source_chunks")
        assert asset_metadata(again, "lexical_index")["documents"] == len(chunks)
        base = lexical.current_path(home).name
        lost = chunks["chunk_id"].iloc[0]
        lexical_delta.write(home, lexical_delta.Delta(base=base, removed={lost}, digest=base))
        damaged = materialize_rebuild(src, home, instance, raise_on_error=False)
    check = lexical_check(damaged)
    assert asset_metadata(damaged, "lexical_index")["how"] == "unchanged"  # by digest: the delta names it
    assert not check.passed and lost in check.description

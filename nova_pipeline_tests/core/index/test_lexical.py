"""The lexical index (BM25 over code-aware terms) and the pure parts of hybrid ranking."""

import json

import pytest

from nova_pipeline.core.index import lexical, lexical_delta
from nova_pipeline.core.index.chunking import chunk_manifest
from nova_pipeline.core.index.embedding import Tokenizer
from nova_pipeline.core.index.ranking import (
    SearchSettings,
    Span,
    boost_shares,
    collapse_places,
    defined_names,
    enclosing_names,
    exact_targets,
    exact_weight,
    fuse,
    is_exact,
    phrase_in,
    phrase_of,
    phrase_share,
)
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions


def test_code_tokens_keep_identifiers_whole_and_split_them_into_stemmed_words():
    toks = lexical.code_tokens("class HTTPServer(read_table): raise JSONDecodeError('Expecting value')")
    assert {
        "httpserver",
        "http",
        "server",
        "read_table",
        "read",
        "tabl",
        "jsondecodeerror",
        "json",
        "decod",
        "error",
        "expect",
        "valu",
    } <= set(toks)
    assert "the" not in lexical.code_tokens("the value of the key")  # English stop words are left out


def test_lower_case_compounds_are_split_into_their_words_and_abbreviations_are_not():
    # "True if the connection is closed." is HTTPResponse.isclosed's docstring: the words must meet
    assert {"isclosed", "close"} <= set(lexical.code_tokens("def isclosed(self):"))
    assert {"close"} <= set(lexical.code_tokens("True if the connection is closed."))
    assert {"getvalu", "get", "valu"} <= set(lexical.code_tokens("buf.getvalue()"))
    assert {"encode_rfc2231", "rfc", "2231"} <= set(lexical.code_tokens("encode_rfc2231(s)"))
    # short words are abbreviations, and a split with a one-letter piece is a misreading: both stay whole
    assert set(lexical.code_tokens("cwd hdr getaddrinfo")) == {"cwd", "hdr", "getaddrinfo"}


@pytest.fixture
def chunks(json_tree):
    tok = Tokenizer()
    manifest = scan(ScanOptions(json_tree)).manifest
    df, _ = chunk_manifest(json_tree, manifest, None, tok.count, tok.max_seq_length)
    return df


def test_identifier_and_error_string_queries_find_their_chunk(chunks, tmp_path):
    stats = lexical.build(chunks, tmp_path / "idx")
    idx = lexical.load(tmp_path / "idx")
    assert stats.docs == len(idx) == len(chunks) and stats.vocabulary > 100

    top = idx.docs.iloc[idx.search("JSONDecodeError", 1)[0].row]
    assert top["path"] == "json/decoder.py" and "JSONDecodeError" in top["symbol"]
    hit = idx.search("Expecting ',' delimiter", 3)
    text = chunks.set_index("chunk_id")["text"]
    assert any("Expecting ',' delimiter" in text[idx.docs["chunk_id"].iat[h.row]] for h in hit)
    assert {"expect", "delimit"} <= set(hit[0].matched)
    assert idx.search("zzzz_not_a_word", 5) == []  # no term in the vocabulary: no hits, not arbitrary ones


def test_filters_mask_by_path_glob_and_language(chunks, tmp_path):
    lexical.build(chunks, tmp_path / "idx")
    idx = lexical.load(tmp_path / "idx")
    hits = idx.search("decode", 50, idx.mask("json/encoder.py", None))
    assert hits and {idx.docs["path"].iat[h.row] for h in hits} == {"json/encoder.py"}
    assert idx.search("decode", 50, idx.mask(None, "markdown")) == []
    assert idx.paths_matching("json/*.py") == sorted(set(chunks["path"]))
    assert idx.paths_matching("*/tool.py") == ["json/tool.py"]


def test_update_does_no_work_when_unchanged_and_switches_current_on_change(chunks, tmp_path):
    home = tmp_path / "home"
    loads = []

    def with_texts():
        loads.append(1)
        return chunks

    first = lexical.update(home, chunks.drop(columns=["text"]), with_texts=with_texts)
    assert first.built and lexical.current_path(home).name == first.digest and loads == [1]
    again = lexical.update(home, chunks.drop(columns=["text"]), with_texts=with_texts)
    assert not again.built and again.seconds == 0.0 and loads == [1]  # no build: the texts are not read

    fewer = chunks[chunks["path"] != "json/tool.py"]
    second = lexical.update(home, fewer)
    assert second.built and second.digest != first.digest
    live = lexical.load_current(home)
    assert live.digest == second.digest and len(live) == len(fewer)
    assert lexical_delta.id_failures(lexical.current_path(home), fewer["chunk_id"], None) == []
    failures = lexical_delta.id_failures(lexical.current_path(home), chunks["chunk_id"], None)
    assert failures and "lacks" in failures[0]
    # a third build prunes the oldest directory, never CURRENT or the one before
    lexical.update(home, chunks.iloc[:10])
    dirs = {p.name for p in (home / "lexical").iterdir() if p.is_dir()}
    assert dirs == {second.digest, lexical.chunks_digest(chunks.iloc[:10])}


def test_a_damaged_index_says_how_to_recover(chunks, tmp_path):
    lexical.build(chunks, tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    (tmp_path / "idx" / "docs.parquet").write_bytes(b"not parquet")
    with pytest.raises(lexical.LexicalIndexError, match="rebuild"):
        lexical.load(tmp_path / "idx")
    assert meta["docs"] == len(chunks)


def test_an_empty_chunk_set_builds_an_empty_index(chunks, tmp_path):
    lexical.build(chunks.iloc[:0], tmp_path / "idx")
    assert lexical.load(tmp_path / "idx").search("decode", 5) == []


def test_reciprocal_rank_fusion_weights_and_the_exact_match_boost():
    s = SearchSettings()
    fused = fuse([(["a", "b", "c"], 1.0), (["c", "d"], 1.0)], set(), s)
    assert [i for i, _ in fused] == ["c", "a", "b", "d"]  # c is in both lists
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    lexical_heavy = fuse([(["a", "b"], 0.1), (["b", "a"], 1.0)], set(), s)
    assert lexical_heavy[0][0] == "b"
    boosted = fuse([(["a", "b", "c"], 1.0)], {"c"}, s)
    assert boosted[0][0] == "c"
    assert fuse([(["a"], 1.0)], {"zzz"}, s) == [("a", pytest.approx(1 / 61))]  # boost only for candidates


def test_exact_targets_and_symbol_or_path_matches():
    assert exact_targets("IgnoreRules") == {"IgnoreRules"}
    assert exact_targets("where is read_table used by HTTPServer") == {"read_table", "HTTPServer"}
    assert exact_targets("decode a json document") == set()
    names = defined_names("def JSONDecoder.raw_decode(self, s, idx=0)")
    assert names == {"JSONDecoder.raw_decode", "raw_decode"}
    assert enclosing_names("def Outer.Inner.run(self)") == {"Outer", "Outer.Inner", "Inner"}
    assert exact_weight({"JSONDecoder"}, "class JSONDecoder", "json/decoder.py") == 1.0
    assert exact_weight({"JSONDecoder"}, "def JSONDecoder.decode(self, s)", "json/decoder.py") == 0.5
    assert exact_weight({"JSONDecoder"}, "def loads(s)", "json/__init__.py") == 0.0
    half = fuse([(["a", "b"], 1.0)], {"b": 0.5}, SearchSettings())
    assert half[0] == ("b", pytest.approx(1 / 62 + 0.5 / 61)) and half[1][0] == "a"
    assert defined_names("def a, def b") == {"a", "b"}
    assert is_exact({"raw_decode"}, "def JSONDecoder.raw_decode(self, s, idx=0)", "json/decoder.py")
    assert is_exact({"decoder.py"}, "", "json/decoder.py")
    assert is_exact({"json/decoder.py"}, "", "json/decoder.py")
    assert not is_exact({"decode"}, "def JSONDecoder.raw_decode(self)", "json/decoder.py")


def test_search_settings_from_the_environment():
    s = SearchSettings.from_env({"NOVA_SEARCH_LEXICAL_WEIGHT": "2.5", "NOVA_SEARCH_RRF_K": "10"})
    assert (s.lexical_weight, s.rrf_k, s.vector_weight) == (2.5, 10, 1.0)
    from nova_pipeline.core.errors import SettingsError

    with pytest.raises(SettingsError, match="NOVA_SEARCH_VECTOR_WEIGHT"):
        SearchSettings.from_env({"NOVA_SEARCH_VECTOR_WEIGHT": "lots"})


def test_a_quoted_error_message_is_a_phrase_matched_across_white_space():
    p = phrase_of('"Expecting property name  enclosed in double quotes"')
    assert p == "expecting property name enclosed in double quotes"
    assert phrase_in(p, 'raise JSONDecodeError(\n    "Expecting property name enclosed in double quotes", s)')
    assert not phrase_in(p, "Expecting property name")
    assert phrase_of("JSONDecoder") == "" and phrase_of("two words") == ""  # names go by exact_targets


def test_boost_shares_take_the_larger_reason_per_chunk():
    cands = [
        ("head", "class JSONDecoder", "json/decoder.py", "class JSONDecoder(object):"),
        ("method", "def JSONDecoder.decode(self, s)", "json/decoder.py", "def decode(self, s): ..."),
        ("other", "def loads(s)", "json/__init__.py", "def loads(s): ..."),
        ("method", "def JSONDecoder.decode(self, s)", "json/decoder.py", None),  # seen on both sides
    ]
    assert boost_shares({"JSONDecoder"}, "", cands) == {"head": 1.0, "method": 0.5}
    phrase = phrase_of("Expecting value: line 1")
    assert boost_shares(set(), phrase, [("x", "", "a.py", 'raise E("Expecting value: line 1 column")')]) == {
        "x": 1.0
    }


def test_the_chunks_digest_ignores_row_order_and_dtypes_and_sees_any_change(chunks):
    base = lexical.chunks_digest(chunks)
    assert len(base) == 32
    assert lexical.chunks_digest(chunks.sample(frac=1.0, random_state=7)) == base  # row order
    as_objects = chunks.astype({c: object for c in ("chunk_id", "path", "symbol", "language")})
    assert lexical.chunks_digest(as_objects.astype({"start_line": "int32"})) == base  # dtypes
    assert lexical.chunks_digest(chunks.assign(n_tokens=0, text="other")) == base  # not what an index holds
    for column in lexical.DIGEST_COLUMNS:
        changed = chunks.copy()
        cell = changed[column].iloc[3]  # one cell changes
        changed.loc[changed.index[3], column] = cell + 1 if column.endswith("_line") else cell + "x"
        assert lexical.chunks_digest(changed) != base, column
    assert lexical.chunks_digest(chunks.iloc[1:]) != base


def test_a_raise_site_earns_the_whole_phrase_boost_and_prose_that_quotes_it_half():
    p = phrase_of("Expecting property name enclosed in double quotes")
    raise_site = 'raise JSONDecodeError(\n    "Expecting property name enclosed in double quotes", s, end)'
    usage = (
        "    $ echo '{ 1.2:3.4}' | python -m json.tool\n"
        "    Expecting property name enclosed in double quotes: line 1"
    )
    assert phrase_share(p, raise_site) == 1.0
    assert phrase_share(p, usage) == 0.5  # a docstring's usage example quotes the message
    assert phrase_share(p, '"""Expecting property name enclosed in double quotes."""') == 0.5  # a docstring
    assert phrase_share(p, "# Expecting property name enclosed in double quotes") == 0.5
    assert phrase_share(p, usage + "\n" + raise_site) == 1.0  # any literal occurrence counts
    assert phrase_share(p, "raise ValueError('expecting PROPERTY name enclosed in double quotes')") == 1.0
    assert phrase_share(p, "Expecting property name") == 0.0 and phrase_share("", raise_site) == 0.0
    assert boost_shares(set(), p, [("site", "", "d.py", raise_site), ("doc", "", "t.py", usage)]) == {
        "site": 1.0,
        "doc": 0.5,
    }


S = Span


@pytest.mark.parametrize(
    "spans, expected",
    [
        # overlapping and adjacent slices of one function merge, with the union of lines and the best score
        ({"a": S("f.py", "def f", 10, 20), "b": S("f.py", "def f", 18, 30)}, [("a", 10, 30, ["b"])]),
        ({"a": S("f.py", "def f", 21, 30), "b": S("f.py", "def f", 10, 20)}, [("a", 10, 30, ["b"])]),
        # blank lines and comments between the slices: up to MERGE_GAP lines
        ({"a": S("f.py", "def f", 10, 20), "b": S("f.py", "def f", 24, 30)}, [("a", 10, 30, ["b"])]),
        (
            {"a": S("f.py", "def f", 10, 20), "b": S("f.py", "def f", 25, 30)},
            [("a", 10, 20, []), ("b", 25, 30, [])],
        ),
        # another symbol, another file, or no symbol: separate places
        (
            {"a": S("f.py", "def f", 10, 20), "b": S("f.py", "def g", 21, 30)},
            [("a", 10, 20, []), ("b", 21, 30, [])],
        ),
        (
            {"a": S("f.py", "def f", 10, 20), "b": S("g.py", "def f", 21, 30)},
            [("a", 10, 20, []), ("b", 21, 30, [])],
        ),
        ({"a": S("f.py", "", 10, 20), "b": S("f.py", "", 21, 30)}, [("a", 10, 20, []), ("b", 21, 30, [])]),
    ],
)
def test_collapse_merges_adjacent_or_overlapping_slices_of_one_symbol(spans, expected):
    order = [(cid, 1.0 / n) for n, cid in enumerate(spans, 1)]
    got = collapse_places(order, spans, 10)
    assert [(c, a, b, m) for c, _, a, b, m in got] == expected
    assert got[0][1] == 1.0  # the best score leads


def test_collapse_bridges_groups_keeps_rank_and_counts_places_for_k():
    spans = {
        "f1": S("f.py", "def f", 1, 10),
        "x": S("x.py", "def x", 1, 5),
        "f3": S("f.py", "def f", 21, 30),
        "f2": S("f.py", "def f", 11, 20),  # joins f1 and f3 into one place
        "y": S("y.py", "def y", 1, 5),
        "z": S("z.py", "def z", 1, 5),
    }
    order = [(c, 1.0 - n / 10) for n, c in enumerate(spans)]
    got = collapse_places(order, spans, 3)
    assert [(c, a, b, m) for c, _, a, b, m in got] == [
        ("f1", 1, 30, ["f2", "f3"]),
        ("x", 1, 5, []),
        ("y", 1, 5, []),
    ]
    assert [sc for _, sc, *_ in got] == [1.0, 0.9, 0.6]
    assert collapse_places(order, {}, 10) == [
        (c, sc, 0, 0, []) for c, sc in order
    ]  # no spans known: raw order


def test_id_failures_compare_the_ids_as_sets_with_and_without_a_delta(tmp_path):
    """The check's Arrow comparison against Python sets (what it replaced) on cases that pass and fail:
    missing, extra, duplicated ids, a delta that removes and adds, and a meta that miscounts."""
    import pandas as pd

    def reference(have, ids, removed=(), added=()):
        live = (set(have) - set(removed)) | set(added)
        missing, extra = set(ids) - live, live - set(ids)
        return (len(missing), len(extra), sorted(missing or extra)[0]) if missing or extra else None

    have = [f"{i:032x}" for i in range(0, 200, 2)]
    index = tmp_path / "index"
    index.mkdir()
    pd.DataFrame({"chunk_id": have}).to_parquet(index / "docs.parquet")
    (index / lexical.META).write_text(json.dumps({"docs": len(have)}))
    cases = [
        (have, (), ()),
        (have[::-1] + have[:5], (), ()),  # order and duplicates do not matter
        (have[3:], (), ()),
        ([*have, "f" * 32, "e" * 32], (), ()),
        ([i for i in have if i not in have[10:20]] + ["a" * 32], have[10:20], ["a" * 32]),
        (have, have[:3], ["b" * 32]),
        (have[5:], have[:5], ()),
    ]
    for ids, removed, added in cases:
        got = lexical_delta._base_id_failures(index, pd.Series(ids, dtype="str"), removed, added)
        want = reference(have, ids, removed, added)
        if want is None:
            assert got == []
        else:
            assert (
                len(got) == 1
                and f"lacks {want[0]} chunks and has {want[1]} others (e.g. {want[2]})" in got[0]
            )
            assert ("with its delta" in got[0]) == bool(removed or added)
    (index / lexical.META).write_text(json.dumps({"docs": len(have) + 1}))
    assert "its meta says" in lexical_delta._base_id_failures(index, have)[0]
    (index / "docs.parquet").write_bytes(b"not parquet")
    assert "cannot be read" in lexical_delta._base_id_failures(index, have)[0]

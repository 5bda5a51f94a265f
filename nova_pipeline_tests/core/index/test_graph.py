"""The code graph on the standard library's json package: symbols, resolved calls (self, imports,
re-exports, inheritance), what stays unresolved, document links, incremental rebuilds equal to clean ones,
files that do not parse, and the queries."""

import numpy as np
import pandas as pd
import pytest

from nova_pipeline.core.errors import InvalidRequestError
from nova_pipeline.core.index import graph
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions


def manifest_of(root):
    """The tree's manifest, as the scan asset makes it."""
    return scan(ScanOptions(root=root), workers=1).manifest


def built(root, previous=None):
    s, r, n, stats = graph.build_graph(root, manifest_of(root), None, previous)
    return graph.Graph(s, r), (s, r, n), stats


def test_calls_resolve_through_self_imports_reexports_and_bases(json_tree):
    g, _, stats = built(json_tree)
    assert stats.files_parsed == 5 and not stats.skipped and 0 < stats.resolved_calls < stats.calls
    kinds = dict(zip(g.symbols["qualname"], g.symbols["kind"]))
    assert (
        kinds["json.decoder.JSONDecoder"] == "class" and kinds["json.decoder.JSONDecoder.decode"] == "method"
    )
    assert kinds["json"] == "module" and kinds["json.decoder.py_scanstring"] == "function"
    q, sites = g.query("callers", "JSONDecoder.raw_decode")  # self.raw_decode in JSONDecoder.decode
    assert q == "json.decoder.JSONDecoder.raw_decode"
    assert [(s["source"], s["path"]) for s in sites] == [
        ("json.decoder.JSONDecoder.decode", "json/decoder.py")
    ]
    # json.load calls loads (same module); loads calls JSONDecoder via `cls = JSONDecoder` only: unresolved
    _, callees = g.query("callees", "json.load")
    assert "json.loads" in {s["target"] for s in callees}
    # an import through the package's re-export: tool.py's json.loads -> json.loads
    rel = g.relations
    tool = rel[(rel["path"] == "json/tool.py") & (rel["kind"] == "CALLS")]
    assert "json.dumps" in set(tool["target"]) or "json.load" in set(tool["target"])
    # from .decoder import JSONDecodeError, re-exported by json/__init__.py
    imp = rel[(rel["kind"] == "IMPORTS") & (rel["source"] == "json")]
    assert "json.decoder.JSONDecoder" in set(imp["target"])
    # a builtin base stays unresolved, with its text
    base = rel[(rel["kind"] == "INHERITS") & (rel["source"] == "json.decoder.JSONDecodeError")]
    assert base[["target", "target_text"]].values.tolist() == [["", "ValueError"]]
    # every resolved target is a symbol of the tree
    resolved = set(rel.loc[rel["target"] != "", "target"]) - set(rel.loc[rel["kind"] == "LINKS", "target"])
    assert resolved <= set(g.symbols["qualname"])


def test_self_calls_resolve_to_a_base_class_method(tmp_path):
    root = tmp_path / "t"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "base.py").write_text(
        "class Base:\n    def run(self):\n        return self.step()\n\n"
        "    def step(self):\n        return 1\n"
    )
    (root / "pkg" / "child.py").write_text(
        "from .base import Base\n\n\nclass Child(Base):\n"
        "    def step(self):\n        return super().step() + 1\n\n"
        "    def go(self):\n        return self.run()\n"
    )
    g, _, _ = built(root)
    _, callees = g.query("callees", "Child.go")
    assert [s["target"] for s in callees] == ["pkg.base.Base.run"]
    _, callees = g.query("callees", "Child.step")  # super().step(), and super() itself (a builtin)
    assert [(s["target"], s["target_text"]) for s in callees] == [
        ("pkg.base.Base.step", "super().step"),
        ("", "super"),
    ]
    inh = g.relations[g.relations["kind"] == "INHERITS"]
    assert inh[["source", "target"]].values.tolist() == [["pkg.child.Child", "pkg.base.Base"]]


def test_an_edit_reparses_one_file_and_equals_a_clean_build(json_tree):
    _, tables, _ = built(json_tree)
    decoder = json_tree / "json" / "decoder.py"
    decoder.write_text(
        decoder.read_text() + "\n\ndef extra_helper(s):\n    return JSONDecoder().raw_decode(s)\n"
    )
    g2, _, stats = built(json_tree, tables)
    assert stats.files_parsed == 1 and stats.files_reused == 4
    clean, _, _ = built(json_tree)
    pd.testing.assert_frame_equal(g2.symbols, clean.symbols)
    pd.testing.assert_frame_equal(
        g2.relations.sort_values(["path", "line", "target_text", "kind"], ignore_index=True),
        clean.relations.sort_values(["path", "line", "target_text", "kind"], ignore_index=True),
    )
    assert "json.decoder.extra_helper" in set(g2.symbols["qualname"])


def test_resolution_places_its_answers_by_position_whatever_the_relations_index(json_tree):
    """_resolve_tree's columns are Arrow arrays placed by position: a frame whose index is not 0..n-1 gets
    the same answers on the same rows."""
    from nova_pipeline.core.index.graph.build import _resolve_tree

    _, (symbols, relations, names), _ = built(json_tree)
    plain, _ = _resolve_tree(symbols, relations, names)
    shuffled = relations.set_axis(np.arange(len(relations))[::-1] * 3)
    again, _ = _resolve_tree(symbols, shuffled, names)
    pd.testing.assert_frame_equal(again, plain)
    assert (plain["target"] != "").sum() > 0 and (plain["deps"] != "").sum() > 0


def test_tables_do_not_depend_on_how_many_rows_become_python_values_at_a_time(json_tree, monkeypatch):
    """Names and call sites are turned into Python values a slice at a time, and each distinct call site is
    resolved once then spread back over its rows: slices of 7 rows (slice edges everywhere) give the same
    tables as one slice, and a site repeated in a file gets the same answer on each row."""
    from nova_pipeline.core.index.graph import build

    _, whole, _ = built(json_tree)
    monkeypatch.setattr(build, "PY_SLICE", 7)
    _, sliced, _ = built(json_tree)
    for a, b in zip(whole, sliced):
        pd.testing.assert_frame_equal(a, b)
    calls = sliced[1][sliced[1]["kind"] == "CALLS"]
    per_site = calls.groupby(["path", "scope", "target_text"])[["target", "deps"]].nunique()
    assert len(per_site) < len(calls) and (per_site == 1).all().all()
    assert (calls["target"] != "").sum() > 0


def test_tables_do_not_depend_on_how_many_owners_facts_are_held(stdlib_tree, monkeypatch):
    """The resolver's memos (owners' name facts, parsed scopes, module prefixes) are dropped when they hold
    MEMO_HELD entries, so memory stays bounded: with 3, so dropped all the time, a cold build and an edit
    give the same tables as with every entry held."""
    from nova_pipeline.core.index.graph import build, resolve

    _, whole, _ = built(stdlib_tree)
    monkeypatch.setattr(resolve, "MEMO_HELD", 3)
    monkeypatch.setattr(build, "MEMO_HELD", 3)
    dropped = []
    monkeypatch.setattr(resolve.NameFacts, "_drop", lambda self: dropped.append(1) or self._facts.clear())
    _, bounded, _ = built(stdlib_tree)
    assert len(dropped) > 10
    for a, b in zip(whole, bounded):
        pd.testing.assert_frame_equal(a, b)
    (stdlib_tree / "json" / "tool.py").write_text("import json\n\ndef main():\n    return json.dumps(1)\n")
    edited = built(stdlib_tree, bounded)[1]
    monkeypatch.undo()
    for a, b in zip(built(stdlib_tree)[1], edited):
        pd.testing.assert_frame_equal(a, b)


def test_a_file_that_does_not_parse_is_skipped_by_name_and_documents_link(json_tree):
    (json_tree / "broken.py").write_text("def oops(:\n")
    (json_tree / "README.md").write_text(
        "See [the decoder](json/decoder.py), [web](https://x.org), [gone](nope.md).\n"
    )
    g, _, stats = built(json_tree)
    assert list(stats.skipped) == ["broken.py"] and "does not parse" in stats.skipped["broken.py"]
    links = g.relations[g.relations["kind"] == "LINKS"]
    assert links[["source", "target", "target_text"]].values.tolist() == [
        ["README.md", "json/decoder.py", "json/decoder.py"],
        ["README.md", "", "nope.md"],
    ]


def test_a_file_that_does_not_parse_is_not_parsed_again_until_its_bytes_change(json_tree, caplog):
    broken = json_tree / "broken.py"
    broken.write_text("def oops(:\n")
    _, tables, first = built(json_tree)
    why = first.skipped["broken.py"]
    caplog.clear()
    _, tables, again = built(json_tree, tables)
    assert again.skipped == {"broken.py": why} and again.files_parsed == 0  # remembered, still reported
    assert again.files_reused == 5 and "broken.py" not in caplog.text  # not logged at every build
    broken.write_text("def oops():\n    return 1\n")
    g, _, fixed = built(json_tree, tables)
    assert fixed.skipped == {} and fixed.files_parsed == 1 and "broken.oops" in set(g.symbols["qualname"])
    assert (tables[2]["kind"] == graph.UNPARSED).sum() == 1  # the names table kept the one row, not more


def test_names_must_be_known_and_unique(json_tree):
    g, _, _ = built(json_tree)
    with pytest.raises(InvalidRequestError, match="no symbol"):
        g.query("callers", "no_such_function_anywhere")
    with pytest.raises(InvalidRequestError, match="ambiguous: .*JSONDecoder.decode.*JSONEncoder|ambiguous"):
        g.query("callers", "__init__")
    with pytest.raises(InvalidRequestError, match="unknown graph query"):
        g.query("siblings", "json.loads")


def test_expand_adds_callers_and_callees_with_the_reason(json_tree):
    g, _, _ = built(json_tree)
    decode = g.symbols[g.symbols["qualname"] == "json.decoder.JSONDecoder.decode"].iloc[0]
    added = graph.expand(g, [(decode["path"], int(decode["start_line"]), int(decode["end_line"]))])
    assert {
        "qualname": "json.decoder.JSONDecoder.raw_decode",
        "reason": "called by json.decoder.JSONDecoder.decode",
    }.items() <= next(a for a in added if a["qualname"] == "json.decoder.JSONDecoder.raw_decode").items()
    raw = g.symbols[g.symbols["qualname"] == "json.decoder.JSONDecoder.raw_decode"].iloc[0]
    added = graph.expand(g, [(raw["path"], int(raw["start_line"]), int(raw["end_line"]))])
    assert {(a["qualname"], a["reason"]) for a in added} >= {
        ("json.decoder.JSONDecoder.decode", "calls json.decoder.JSONDecoder.raw_decode")
    }


def test_a_name_always_bound_to_one_class_resolves_its_methods_and_others_stay_unresolved(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "shapes.py").write_text(
        "class Pen:\n    def draw(self):\n        return 1\n\n\n"
        "class Canvas:\n    def __init__(self):\n        self.pen = Pen()\n        self.other = None\n\n"
        "    def paint(self):\n        self.pen.draw()\n        self.other.draw()\n\n\n"
        "default = Canvas()\n\n\n"
        "def go(flag):\n    c = Canvas()\n    c.paint()\n    d = Canvas() if flag else None\n    d.paint()\n"
        "    default.paint()\n    e = Pen()\n    e = make()\n    e.draw()\n"
    )
    g, _, _ = built(root)
    calls = g.relations[g.relations["kind"] == "CALLS"]
    got = dict(zip(calls["target_text"] + "@" + calls["line"].astype(str), calls["target"]))
    assert got["self.pen.draw@12"] == "shapes.Pen.draw"  # self.pen is only ever Pen()
    assert got["self.other.draw@13"] == ""  # self.other is None
    assert got["c.paint@21"] == "shapes.Canvas.paint"
    assert got["d.paint@23"] == ""  # a conditional value: not one class
    assert got["default.paint@24"] == "shapes.Canvas.paint"  # a module-level instance
    assert got["e.draw@27"] == ""  # bound twice, to different values


def test_a_tree_rooted_at_a_package_names_its_modules_from_the_package(json_tree):
    g, _, stats = built(json_tree / "json")  # the tree is json/ itself
    assert not stats.skipped and "json.decoder.JSONDecoder.decode" in set(g.symbols["qualname"])
    _, sites = g.query("callers", "JSONDecoder.decode")
    assert {s["source"] for s in sites} == {"json.loads"}  # through `from .decoder import JSONDecoder`


def test_each_symbol_gets_the_first_chunk_that_holds_its_first_line(json_tree):
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer

    manifest = manifest_of(json_tree)
    tok = Tokenizer()
    chunks, _ = chunk_manifest(json_tree, manifest, None, tok.count, tok.max_seq_length)
    chunks = chunks[chunks["path"] != "json/tool.py"]  # a file with symbols and no chunks gets ""
    symbols = graph.build_graph(json_tree, manifest, chunks, None)[0]
    want = []
    for path, line in zip(symbols["path"], symbols["start_line"]):
        rows = chunks[(chunks["path"] == path) & (chunks["start_line"] <= max(line, 1))]
        rows = rows[rows["end_line"] >= max(line, 1)]
        want.append(rows["chunk_id"].iloc[0] if len(rows) else "")
    assert symbols["chunk_id"].tolist() == want
    assert (symbols.loc[symbols["path"] == "json/tool.py", "chunk_id"] == "").all()
    assert (symbols.loc[symbols["path"] != "json/tool.py", "chunk_id"] != "").mean() > 0.9


def _same_relations(a: pd.DataFrame, b: pd.DataFrame) -> None:
    key = ["path", "line", "kind", "source", "target_text", "scope"]
    pd.testing.assert_frame_equal(
        a.sort_values(key, ignore_index=True), b.sort_values(key, ignore_index=True), check_like=True
    )


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_an_incremental_resolution_equals_a_full_one_after_each_kind_of_change(stdlib_tree):
    """Call sites of unchanged files keep their targets only when nothing they read changed: after a body
    edit, a method added to a base class that another file's call finds through inheritance, an import
    alias and a class's bases changed, a file added and one deleted, the tables equal a clean build's."""
    email = stdlib_tree / "email"
    pkg = stdlib_tree / "pkgx"  # C's base comes through n's re-export; a call site elsewhere goes through it
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for mod in ("o", "p"):
        (pkg / f"{mod}.py").write_text("class Base:\n    def m(self):\n        return 1\n")
    (pkg / "n.py").write_text("from pkgx.o import Base\n")
    (pkg / "c.py").write_text("from pkgx.n import Base\n\n\nclass C(Base):\n    pass\n")
    (pkg / "site.py").write_text("from pkgx.c import C\n\n\ndef f():\n    return C().m()\n")
    (pkg / "broken.py").write_text("def (:\n")  # skipped at every build: it has no facts to compare
    helpers = "".join(f"class {c}:\n    def run(self):\n        return 1\n\n\n" for c in ("Helper", "Other"))
    holder = "class Holder:\n    def __init__(self):\n        self.h = Helper()\n"
    (pkg / "q.py").write_text(helpers + holder)  # self.h is always one class's instance, inherited below
    (pkg / "sub.py").write_text(
        "from pkgx.q import Holder\n\n\nclass Sub(Holder):\n    def go(self):\n        return self.h.run()\n"
    )
    _, tables, _ = built(stdlib_tree)
    steps = [
        # a body edit: every other file's sites keep their targets
        (email / "quoprimime.py", "def header_length(bytearray):", "def header_length(bytearray):\n    pass"),
        # a call in policy.py that nothing defines yet ...
        (
            email / "policy.py",
            "    def header_fetch_parse(self, name, value):",
            "    def probe_caller(self):\n        return self.brand_new_probe()\n\n"
            "    def header_fetch_parse(self, name, value):",
        ),
        # ... found once _policybase.Policy (its base, another file) defines it
        (
            email / "_policybase.py",
            "    def clone(self, **kw):",
            "    def brand_new_probe(self):\n        return 1\n\n    def clone(self, **kw):",
        ),
        # an alias other modules' calls go through (utils.quote)
        (
            email / "utils.py",
            "from email._parseaddr import quote\n",
            "from email._parseaddr import unquote as quote\n",
        ),
        # a class's bases
        (
            email / "mime" / "text.py",
            "class MIMEText(MIMENonMultipart):",
            "from email.mime.base import MIMEBase\nclass MIMEText(MIMEBase):",
        ),
        # a re-export: C (in c.py, unchanged) now has p's Base, and site.py's C().m() finds p's m
        (pkg / "n.py", "from pkgx.o import Base", "from pkgx.p import Base"),
        # the instance an inherited attribute holds (sub.py's self.h.run goes through q.py's Holder)
        (pkg / "q.py", "self.h = Helper()", "self.h = Other()"),
    ]
    kept = []
    for path, old, new in steps:
        _edit(path, old, new)
        g, tables, stats = built(stdlib_tree, tables)
        clean, _, _ = built(stdlib_tree)
        _same_relations(g.relations, clean.relations)
        kept.append(stats.calls_kept)
    assert all(k > 0 for k in kept)
    found = g.relations[g.relations["target_text"] == "self.brand_new_probe"]
    assert found["target"].tolist() == ["email._policybase._PolicyBase.brand_new_probe"]
    assert g.relations.loc[g.relations["target_text"] == "C().m", "target"].tolist() == ["pkgx.p.Base.m"]
    assert g.relations.loc[g.relations["target_text"] == "self.h.run", "target"].tolist() == [
        "pkgx.q.Other.run"
    ]
    # a module added and one removed: every site is resolved again
    (email / "probe_added.py").write_text("from email.utils import quote\n\ndef f(s):\n    return quote(s)\n")
    (email / "base64mime.py").unlink()
    g, tables, stats = built(stdlib_tree, tables)
    clean, _, _ = built(stdlib_tree)
    _same_relations(g.relations, clean.relations)
    assert stats.calls_kept == 0


def test_name_facts_per_owner_equal_a_dict_of_every_row_over_chunked_columns(json_tree, monkeypatch):
    """The resolver's facts, built an owner at a time from the code_names table read in several chunks (as
    Parquet's row groups give it), equal those built from every row at once; and the same when the chunks'
    encodings disagree and the column is encoded as one."""
    import pyarrow as pa

    from nova_pipeline.core.index.graph import resolve

    _, (_, _, names), _ = built(json_tree)
    table = pa.Table.from_pandas(names, preserve_index=False)
    chunked = pa.concat_tables([table.slice(i, 97) for i in range(0, table.num_rows, 97)]).to_pandas()
    assert pa.array(chunked["owner"], pa.large_string()).num_chunks > 1
    want: dict[str, tuple] = {}
    for owner, name, target, kind in zip(names["owner"], names["name"], names["target"], names["kind"]):
        aliases, bound, local, instances = want.setdefault(owner, ({}, set(), set(), {}))
        if kind == "alias":
            aliases[name] = target
        elif kind == "bound":
            bound.add(name)
        elif kind in ("instance", "attr_instance"):
            instances[(kind, name)] = target
        elif kind != graph.UNPARSED:
            local.add(name)
    assert len(want) > 20 and any(f[0] for f in want.values()) and any(f[1] for f in want.values())
    facts = resolve.NameFacts(chunked, skip=(graph.UNPARSED,))
    assert {o: facts.of(o) for o in want} == want
    assert facts.of("no.such.owner") == ({}, set(), set(), {})
    assert facts.view(resolve.NameFacts.ALIAS).get("no.such.owner", "absent") == "absent"
    encoded = resolve._encoded
    monkeypatch.setattr(
        resolve, "_encoded", lambda v: (None, []) if isinstance(v, pa.ChunkedArray) else encoded(v)
    )
    again = resolve.NameFacts(chunked, skip=(graph.UNPARSED,))
    assert {o: again.of(o) for o in want} == want

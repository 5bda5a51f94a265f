"""The code_graph asset in a rebuild: its tables and metadata, an edit parsed incrementally, the tables in
the golden copy and put back by reset_index, and its three ways in: ``nova graph``, ``nova search
--expand`` and ``GET /graph/...`` of nova serve."""

import json

import dagster as dg
import httpx
import pytest

from nova_pipeline.core.index import graph
from nova_pipeline.core.protect import golden
from nova_pipeline.core.tables import CODE_RELATIONS, CODE_SYMBOLS, read_table, table_path, write_table
from nova_pipeline_tests.cli.test_cli import nova
from nova_pipeline_tests.conftest import asset_metadata, materialize_rebuild

pytestmark = pytest.mark.integration


def test_the_graph_is_built_incrementally_kept_in_the_golden_copy_and_queried(json_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        first = materialize_rebuild(json_tree, home, instance)
        assert first.success
        meta = asset_metadata(first, "code_graph")
        assert meta["files_parsed"] == 5 and meta["files_reused"] == 0 and meta["calls_resolved"] > 30
        symbols = read_table(home, CODE_SYMBOLS)
        decode = symbols[symbols["qualname"] == "json.decoder.JSONDecoder.decode"].iloc[0]
        assert decode["chunk_id"]  # the chunk holding its first line

        decoder = json_tree / "json" / "decoder.py"
        decoder.write_text(
            decoder.read_text() + "\n\ndef graph_probe(s):\n    return JSONDecoder().decode(s)\n"
        )
        second = materialize_rebuild(json_tree, home, instance)
        meta = asset_metadata(second, "code_graph")
        assert meta["files_parsed"] == 1 and meta["files_reused"] == 4 and meta["unchanged"] is False
        relations = table_path(home, CODE_RELATIONS).stat().st_mtime_ns
        third = materialize_rebuild(json_tree, home, instance)  # nothing changed: nothing parsed nor written
        meta = asset_metadata(third, "code_graph")
        assert meta["unchanged"] is True and meta["files_parsed"] == 0 and meta["files_reused"] == 5
        assert table_path(home, CODE_RELATIONS).stat().st_mtime_ns == relations
    callers = graph.load(home).query("callers", "JSONDecoder.decode")[1]
    # json.loads calls it through _default_decoder = JSONDecoder(...), a module-level instance
    assert {c["source"] for c in callers} == {"json.decoder.graph_probe", "json.loads"}

    cur = golden.current_version(home)
    assert (cur.path / "tables" / f"{CODE_RELATIONS}.parquet").read_bytes() == table_path(
        home, CODE_RELATIONS
    ).read_bytes()
    table_path(home, CODE_SYMBOLS).unlink()
    golden.reset_index(home, None, True, "test")
    assert read_table(home, CODE_SYMBOLS) is not None

    env = {"NOVA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = nova(["graph", "callers", "JSONDecoder.decode", "--json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert {s["source"] for s in json.loads(out.stdout)["sites"]} == {
        "json.decoder.graph_probe",
        "json.loads",
    }
    out = nova(["graph", "callers", "__init__"], env, tmp_path)
    assert out.returncode == 2 and "ambiguous" in out.stderr and "Traceback" not in out.stderr


def test_a_new_dagster_instance_finds_the_chunks_and_graph_current_and_a_half_written_graph_is_rebuilt(
    json_tree, tmp_path
):
    """What made the chunks table and the graph's tables is kept in their footers, not only in the run
    storage: a new instance (run storage lost, or moved to Postgres) chunks and parses nothing again. Graph
    tables of two builds (a run killed between their writes) are parsed again whole."""
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        first = materialize_rebuild(json_tree, home, instance)
        assert first.success
    relations = table_path(home, CODE_RELATIONS).stat().st_mtime_ns
    with dg.instance_for_test() as fresh:
        again = materialize_rebuild(json_tree, home, fresh)
        chunks, meta = asset_metadata(again, "source_chunks"), asset_metadata(again, "code_graph")
        terms = asset_metadata(first, "lexical_index")["vocabulary"]
        assert terms > 0 and asset_metadata(again, "lexical_index")["vocabulary"] == terms  # not "0 terms"
        assert chunks["files_chunked"] == 0 and chunks["files_reused"] == 5
        assert meta["unchanged"] is True and meta["files_parsed"] == 0 and meta["files_reused"] == 5
        assert table_path(home, CODE_RELATIONS).stat().st_mtime_ns == relations

        kept = graph.kept_attrs(home)
        assert kept["graph_version"] == graph.GRAPH_VERSION and kept["files"] == "5"
        newer = {**kept, "inputs_digest": "0" * 32}  # code_symbols of a later build, the rest not written
        write_table(home, CODE_SYMBOLS, read_table(home, CODE_SYMBOLS), attrs=newer)
        assert graph.kept_attrs(home) == {"graph_version": graph.MIXED}
        mixed = asset_metadata(materialize_rebuild(json_tree, home, fresh), "code_graph")
    assert mixed["files_parsed"] == 5 and mixed["files_reused"] == 0
    assert graph.kept_attrs(home) == kept  # written whole again, from the same inputs


def test_nova_serve_answers_graph_queries_and_refuses_bad_ones(json_tree, tmp_path):
    from nova_pipeline_tests.service.test_hostile import serve

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize_rebuild(json_tree, home, instance).success
    with serve(home) as s:
        r = httpx.get(f"{s.url}/graph/callees", params={"name": "JSONDecoder.decode"})
        assert r.status_code == 200
        assert "json.decoder.JSONDecoder.raw_decode" in {x["target"] for x in r.json()["sites"]}
        assert httpx.get(f"{s.url}/graph/callers", params={"name": "nope_nothing"}).status_code == 404
        assert httpx.get(f"{s.url}/graph/siblings", params={"name": "x"}).status_code == 400
        assert httpx.get(f"{s.url}/graph/callers").status_code == 400
        table_path(home, CODE_SYMBOLS).unlink()
        gone = httpx.get(f"{s.url}/graph/callers", params={"name": "JSONDecoder.decode"})
        assert gone.status_code == 503 and str(home) not in gone.text

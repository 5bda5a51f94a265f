import dagster as dg

from nova_pipeline.core.compression.store import ContentStore
from nova_pipeline.core.tables import table_path
from nova_pipeline.defs import compression, ingest
from nova_pipeline_tests.conftest import resources_for


def materialize(src, home, instance):
    resources = resources_for(src, home)
    return dg.materialize(
        [
            ingest.source_files,
            compression.frequent_patterns,
            compression.compression_dictionary,
            compression.compressed_store,
        ],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def md(result, asset):
    return result.asset_materializations_for_node(asset)[-1].metadata


def checks(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_compression_stages_on_real_tree_then_a_no_op_rerun(stdlib_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        first = materialize(stdlib_tree, home, instance)
        assert first.success
        assert checks(first) == {"dictionary_beats_no_dictionary": True, "store_round_trip": True}
        assert md(first, "compression_dictionary")["action"].value == "trained"
        assert md(first, "compression_dictionary")["heldout_gain"].value > 1.0
        assert md(first, "compressed_store")["objects_written"].value > 30
        assert md(first, "frequent_patterns")["patterns"].value > 10
        assert "Python Software Foundation" in md(first, "frequent_patterns")["top_patterns"].value

        table = table_path(home, "frequent_patterns").read_bytes()

        second = materialize(stdlib_tree, home, instance)
        assert second.success
        assert md(second, "frequent_patterns")["shards_analysed"].value == 0
        assert md(second, "frequent_patterns")["unchanged"].value is True  # told by the table's footer
        assert table_path(home, "frequent_patterns").read_bytes() == table
        assert (
            md(second, "frequent_patterns")["patterns"].value
            == md(first, "frequent_patterns")["patterns"].value
        )
        assert md(second, "compression_dictionary")["action"].value == "unchanged"
        assert md(second, "compressed_store")["objects_written"].value == 0
        assert md(second, "compressed_store")["bytes_in"].value == 0


def test_round_trip_check_fails_on_a_flipped_bit_naming_the_object(stdlib_tree, tmp_path):
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize(stdlib_tree, home, instance).success
        store = ContentStore(home)
        key = store.index()["key"].iloc[3]
        path = store.object_path(key)
        raw = bytearray(open(path, "rb").read())
        raw[-2] ^= 0x10
        open(path, "wb").write(raw)
        again = materialize(stdlib_tree, home, instance)
        evaluation = [e for e in again.get_asset_check_evaluations() if e.check_name == "store_round_trip"][0]
        assert not evaluation.passed
        assert key in evaluation.description and path in evaluation.description


def test_an_edit_or_another_option_analyses_patterns_again(stdlib_tree, tmp_path):
    """The unchanged exit compares the digest of the files and the options kept in the table's footer: an
    edited file, or another option, is analysed again."""
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert materialize(stdlib_tree, home, instance).success
        target = sorted(p for p in stdlib_tree.rglob("*.py"))[0]
        target.write_text(target.read_text() + "\n# an edit for the pattern analysis\n")
        edited = materialize(stdlib_tree, home, instance)
        assert md(edited, "frequent_patterns")["unchanged"].value is False
        assert md(edited, "frequent_patterns")["shards_analysed"].value >= 1
        assert md(materialize(stdlib_tree, home, instance), "frequent_patterns")["unchanged"].value is True
        other = dg.materialize(
            [ingest.source_files, compression.frequent_patterns],
            resources=resources_for(stdlib_tree, home),
            instance=instance,
            run_config={"ops": {"frequent_patterns": {"config": {"min_frequency": 3}}}},
        )
        assert md(other, "frequent_patterns")["unchanged"].value is False

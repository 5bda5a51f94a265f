"""The package's structure: one owner of the layout, one source of defaults, one naming convention."""

import dataclasses
import pkgutil
import subprocess
import sys

import dagster as dg

import nova_pipeline.core
import nova_pipeline.defs
from nova_pipeline.core import tables
from nova_pipeline.core.dictionary import DictionaryOptions
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.patterns import PatternOptions
from nova_pipeline.definitions import defs
from nova_pipeline.defs import compression, ingest
from nova_pipeline.resources import ParquetTableIOManager
from nova_pipeline_tests.conftest import resources_for


def test_the_io_manager_takes_its_home_from_the_settings_and_writes_where_core_reads(json_tree, tmp_path):
    assert "nova_home" not in ParquetTableIOManager.model_fields  # no second home to drift apart
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [ingest.source_files], resources=resources_for(json_tree, home), instance=instance
        ).success
    assert Layout(home).table(tables.SOURCE_FILES).is_file()
    assert tables.read_table(Layout(home), tables.SOURCE_FILES)["path"].str.startswith("json/").all()


def test_every_dataframe_asset_is_a_named_table(json_tree, tmp_path):
    """In a whole rebuild, the assets whose values the table IO manager stored are exactly the DataFrame
    assets, each a table named in core.tables and written there; every other asset hands on no value."""
    from nova_pipeline_tests.conftest import materialize_rebuild

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        res = materialize_rebuild(json_tree, home, instance)
    assert res.success
    stored = {
        e.step_key for e in res.all_events
        if e.event_type == dg.DagsterEventType.HANDLED_OUTPUT
        and e.event_specific_data.manager_key == "io_manager"
    }
    assert stored == {tables.SOURCE_FILES, tables.FREQUENT_PATTERNS, tables.SOURCE_CHUNKS}
    assert stored <= set(tables.TABLES)
    assert all(Layout(home).table(name).is_file() for name in stored)


def test_run_config_defaults_are_core_defaults():
    pairs = [
        (compression.PatternsConfig, PatternOptions()),
        (compression.DictionaryConfig, DictionaryOptions()),
    ]
    for config_cls, options in pairs:
        for name, field in config_cls.model_fields.items():
            assert field.default == getattr(options, name), (config_cls.__name__, name)
        assert set(config_cls.model_fields) <= {f.name for f in dataclasses.fields(options)}


def test_the_store_compresses_at_the_dictionarys_level(stdlib_tree, tmp_path):
    import zstandard as zstd

    from nova_pipeline.core.store import ContentStore

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        res = dg.materialize(
            [
                ingest.source_files,
                compression.frequent_patterns,
                compression.compression_dictionary,
                compression.compressed_store,
            ],
            resources=resources_for(stdlib_tree, home),
            instance=instance,
            run_config={"ops": {"compression_dictionary": {"config": {"level": 19}}}},
        )
    assert res.asset_materializations_for_node("compressed_store")[0].metadata["zstd_level"].value == 19
    assert ContentStore(home).registry.current().level == 19
    assert "level" not in compression.StoreConfig.model_fields  # one knob, not two that must agree
    frame = open(ContentStore(home).object_path(ContentStore(home).index()["key"].iloc[0]), "rb").read()
    assert zstd.get_frame_parameters(frame).content_size > 0


def test_names_follow_one_convention():
    core = {m.name for m in pkgutil.iter_modules(nova_pipeline.core.__path__)}
    glue = {m.name for m in pkgutil.iter_modules(nova_pipeline.defs.__path__)}
    assert core & glue == set()  # a module name means one module
    repo = defs.get_repository_def()
    ops = {
        node.definition.name
        for job in repo.get_all_jobs()
        if not job.name.startswith("__")
        for node in job.graph.nodes
        if not job.asset_layer.executable_asset_keys
    }
    assert ops and all(name.endswith("_op") for name in ops), ops


def test_loading_the_definitions_freezes_what_they_loaded_and_leaves_the_collector_as_it_was():
    """definitions.py pauses the cyclic GC while it imports, then freezes; the GC must be on again after (or
    stay off, when the importing program had turned it off)."""
    code = ("import gc, sys\n"
            "if sys.argv[1] == 'off': gc.disable()\n"
            "import nova_pipeline.definitions\n"
            "print(gc.isenabled(), gc.get_freeze_count())")
    for before, enabled in (("on", "True"), ("off", "False")):
        out = subprocess.run([sys.executable, "-c", code, before], capture_output=True, text=True, check=True)
        state, frozen = out.stdout.split()
        assert state == enabled and int(frozen) > 50_000, out.stdout

"""The package's structure: layers and groups, one name per thing, the definitions pinned.

:data:`LAYERS` is the one written statement of which part of ``nova_pipeline`` may import which (README,
"Architecture", draws it). The import graph is read with the standard library's :mod:`ast`, function-level
imports included (a late import is for a heavy library, never to hide a cycle); imports under ``if
TYPE_CHECKING:`` are left out.
"""

from __future__ import annotations

import ast
import dataclasses
import pkgutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

import nova_pipeline
import nova_pipeline.defs
from nova_pipeline.core import keys, tables
from nova_pipeline.core.compression.dictionary import DictionaryOptions
from nova_pipeline.core.compression.repeats import PatternOptions
from nova_pipeline.core.layout import Layout
from nova_pipeline.definitions import defs
from nova_pipeline.defs import compression, ingest
from nova_pipeline.defs.resources import ParquetTableIOManager
from nova_pipeline_tests.conftest import resources_for

PACKAGE = Path(nova_pipeline.__file__).parent
TESTS = Path(__file__).parent

# Layers, lowest first. A module imports only from its own layer or below; inside core, a group imports
# only the core root and the groups before it (keys.GROUPS is their order).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core root", ("nova_pipeline.core",)),  # the modules directly in core/ (not its groups)
    *[(f"core.{g}", (f"nova_pipeline.core.{g}",)) for g in keys.GROUPS],
    ("core.live", ("nova_pipeline.core.live",)),  # live updates: the groups' functions, applied per save
    ("deploy", ("nova_pipeline.deploy",)),
    ("defs and service", ("nova_pipeline.defs", "nova_pipeline.service", "nova_pipeline.definitions")),
    ("cli and the Python API", ("nova_pipeline.cli", "nova_pipeline")),
]
# Documented exceptions to "every error raised from core is a NovaError": the os-level primitive and
# the mapping protocol of the store (``KeyError``: nothing stored under that key, as a dict says it).
RAISE_ALLOWED = {("atomic.py", "OSError"), ("store.py", "KeyError")}
# Modules over MAX_LINES that are one responsibility (the note of issue 20 says why).
MAX_LINES = 520
LONG_MODULES: set[str] = set()


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``nova_pipeline`` (packages by their __init__)."""
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``files`` it imports (``from package import module`` names the module)."""
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        out: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        graph[name] = {m for m in out if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of a module: the longest matching prefix wins; a module directly in
    ``core/`` is the core root."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it there")
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]


def test_the_import_graph_has_no_cycles_and_every_import_goes_down_or_sideways():
    graph = import_graph(module_files())
    assert len(graph) > 60  # the whole package was read
    assert cycles(graph) == []
    assert layer_violations(graph) == []


def test_the_structure_check_fails_on_a_cycle_and_on_an_upward_import():
    """The checks above on a graph with a circle added on purpose, and with core importing the CLI."""
    graph = import_graph(module_files())
    circular = {
        **graph,
        "nova_pipeline.core.compression.store": graph["nova_pipeline.core.compression.store"]
        | {"nova_pipeline.core.protect.golden.versions"},
    }
    assert ["nova_pipeline.core.compression.store", "nova_pipeline.core.protect.golden.versions"] in cycles(
        circular
    )
    upward = {**graph, "nova_pipeline.core.tables": {"nova_pipeline.cli.common"}}
    assert layer_violations(upward) == [
        "nova_pipeline.core.tables (core root) imports nova_pipeline.cli.common (cli and the Python API)"
    ]
    sideways_up = {**graph, "nova_pipeline.core.index.reconcile": {"nova_pipeline.core.protect.guard"}}
    assert any("core.index.reconcile" in v for v in layer_violations(sideways_up))


def test_nothing_imports_dagster_internals_and_core_imports_no_dagster():
    internals, in_core = [], []
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = (
                [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for m in mods:
                if m.startswith("dagster._") or m.startswith("dagster_celery._"):
                    internals.append(f"{name}: {m}")
                if name.startswith("nova_pipeline.core") and m.split(".")[0].startswith("dagster"):
                    in_core.append(f"{name}: {m}")
    assert internals == [] and in_core == []


def test_one_vocabulary_from_the_ui_groups_to_the_test_folders():
    ui_groups = {
        defs.get_repository_def().asset_graph.get(k).group_name
        for k in defs.get_repository_def().asset_graph.get_all_asset_keys()
    }
    assert ui_groups == set(keys.GROUPS) - {keys.SERVING}  # serving has sensors and jobs, no asset
    glue = {m.name for m in pkgutil.iter_modules(nova_pipeline.defs.__path__)}
    core_groups = {p.name for p in (PACKAGE / "core").iterdir() if (p / "__init__.py").exists()}
    test_groups = {p.name for p in (TESTS / "core").iterdir() if (p / "__init__.py").exists()}
    # live updates are no asset group: they apply the groups' own functions per save (nova watch)
    assert set(keys.GROUPS) <= glue and core_groups == set(keys.GROUPS) | {"live"} == test_groups
    for group in (*keys.GROUPS, "live"):
        pkg = sys.modules.get(f"nova_pipeline.core.{group}") or __import__(
            f"nova_pipeline.core.{group}", fromlist=["x"]
        )
        assert pkg.__doc__ and pkg.__all__, group  # says what it owns and what it may import


def test_a_module_name_means_one_module_and_names_follow_one_convention():
    leaves = [
        name.rsplit(".", 1)[-1]
        for name in module_files()
        if name.startswith("nova_pipeline.core.") and not module_files()[name].name == "__init__.py"
    ]
    assert len(leaves) == len(set(leaves)), sorted({n for n in leaves if leaves.count(n) > 1})
    repo = defs.get_repository_def()
    ops = {
        node.definition.name
        for job in repo.get_all_jobs()
        if not job.name.startswith("__")
        for node in job.graph.nodes
        if not job.asset_layer.executable_asset_keys
    }
    assert ops and all(name.endswith("_op") for name in ops), ops


def test_every_test_file_sits_beside_the_group_of_what_it_tests():
    """Test folders mirror the package: every folder of tests is a package of nova_pipeline."""
    for folder in {p.parent for p in TESTS.rglob("test_*.py")} - {TESTS}:
        assert (PACKAGE / folder.relative_to(TESTS)).is_dir(), folder


def test_every_error_raised_from_core_is_a_nova_error():
    from nova_pipeline.core import errors

    ours = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.NovaError)}
    foreign = []
    for name, path in module_files().items():
        if not name.startswith("nova_pipeline.core"):
            continue
        tree = ast.parse(path.read_text())
        local = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                f = node.exc.func
                raised = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "?"
                if (
                    raised[0].isupper()
                    and raised not in ours | local
                    and (path.name, raised) not in RAISE_ALLOWED
                ):
                    foreign.append(f"{path.relative_to(PACKAGE)}:{node.lineno} raises {raised}")
    assert foreign == []


def test_modules_stay_small():
    long = {
        name: n
        for name, p in module_files().items()
        if (n := len(p.read_text().splitlines())) > MAX_LINES and name not in LONG_MODULES
    }
    assert long == {}


# The definitions, pinned: a misspelt deps key would load as an external asset without an error.
ASSETS = {
    keys.SOURCE_FILES: (keys.INGEST, []),
    keys.FREQUENT_PATTERNS: (keys.COMPRESSION, [keys.SOURCE_FILES]),
    keys.COMPRESSION_DICTIONARY: (keys.COMPRESSION, [keys.FREQUENT_PATTERNS, keys.SOURCE_FILES]),
    keys.COMPRESSED_STORE: (keys.COMPRESSION, [keys.COMPRESSION_DICTIONARY, keys.SOURCE_FILES]),
    keys.SOURCE_CHUNKS: (keys.INDEX, [keys.SOURCE_FILES]),
    keys.LEXICAL_INDEX: (keys.INDEX, [keys.SOURCE_CHUNKS]),
    keys.VECTOR_INDEX: (keys.INDEX, [keys.LEXICAL_INDEX, keys.SOURCE_CHUNKS]),
    keys.CODE_GRAPH: (keys.INDEX, [keys.SOURCE_CHUNKS, keys.SOURCE_FILES]),
    keys.GOLDEN_COPY: (
        keys.PROTECT,
        [keys.CODE_GRAPH, keys.COMPRESSED_STORE, keys.LEXICAL_INDEX, keys.SOURCE_CHUNKS, keys.VECTOR_INDEX],
    ),
    keys.BACKUPS: (keys.PROTECT, [keys.GOLDEN_COPY]),
}
CHECKS = {
    (keys.BACKUPS, "backup_full_read"),
    (keys.BACKUPS, "backup_restore_drill"),
    (keys.BACKUPS, "backup_structure"),
    (keys.COMPRESSED_STORE, "store_round_trip"),
    (keys.COMPRESSION_DICTIONARY, "dictionary_beats_no_dictionary"),
    (keys.GOLDEN_COPY, "golden_copy_verifies"),
    (keys.LEXICAL_INDEX, "lexical_index_matches_chunks"),
    (keys.VECTOR_INDEX, "chunks_find_themselves"),
    (keys.VECTOR_INDEX, "vector_count_matches_chunks"),
}
JOBS = {"backup", "failback", "failover", "live_update", "rebuild", "reset_index", "restore", "restore_drill"}
SENSORS = {"dead_runs", "primary_recovered", "primary_vector_store_health", "source_tree_changed"}
SCHEDULES = {
    ("daily_backup", "0 3 * * *", "backup"),
    ("nightly_rebuild", "0 2 * * *", "rebuild"),
    ("weekly_restore_drill", "0 4 * * 0", "restore_drill"),
}


def test_the_definitions_are_exactly_these():
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    got = {
        k.to_user_string(): (
            graph.get(k).group_name,
            sorted(p.to_user_string() for p in graph.get(k).parent_keys),
        )
        for k in graph.get_all_asset_keys()
    }
    assert got == ASSETS
    assert all(graph.get(k).is_materializable for k in graph.get_all_asset_keys())  # none external
    assert {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys} == CHECKS
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == JOBS
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert {(s.name, s.cron_schedule, s.job_name) for s in repo.schedule_defs} == SCHEDULES
    assert set(keys.ASSETS) == set(ASSETS)


@pytest.mark.parametrize("variable, value", [("NOVA_INDEX_SLICES", "3"), ("NOVA_FAILOVER_THRESHOLD", "7")])
def test_settings_are_read_when_a_run_starts_not_when_the_definitions_load(variable, value, monkeypatch):
    from nova_pipeline.core.serving.failover import FailoverSettings
    from nova_pipeline.defs.index.vectors import resolve_slices

    monkeypatch.setenv(variable, value)  # after the definitions were loaded by this module's imports
    assert (
        resolve_slices(0)
        if variable == "NOVA_INDEX_SLICES"
        else FailoverSettings.from_env().failure_threshold
    ) == int(value)


def test_the_io_manager_takes_its_home_from_the_settings_and_writes_where_core_reads(json_tree, tmp_path):
    assert "nova_home" not in ParquetTableIOManager.model_fields  # no second home to drift apart
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [ingest.source_files], resources=resources_for(json_tree, home), instance=instance
        ).success
    assert Layout(home).table(keys.SOURCE_FILES).is_file()
    assert tables.read_table(Layout(home), keys.SOURCE_FILES)["path"].str.startswith("json/").all()


def test_every_dataframe_asset_is_a_named_table(json_tree, tmp_path):
    """In a whole rebuild, the assets whose values the table IO manager stored are exactly the DataFrame
    assets, each a table named in core.tables and written there; every other asset hands on no value."""
    from nova_pipeline_tests.conftest import materialize_rebuild

    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        res = materialize_rebuild(json_tree, home, instance)
    assert res.success
    stored = {
        e.step_key
        for e in res.all_events
        if e.event_type == dg.DagsterEventType.HANDLED_OUTPUT
        and e.event_specific_data.manager_key == "io_manager"
    }
    assert stored == {keys.SOURCE_FILES, keys.FREQUENT_PATTERNS, keys.SOURCE_CHUNKS}
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

    from nova_pipeline.core.compression.store import ContentStore

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


def test_loading_the_definitions_freezes_what_they_loaded_and_leaves_the_collector_as_it_was():
    """definitions.py pauses the cyclic GC while it imports, then freezes; the GC must be on again after (or
    stay off, when the importing program had turned it off)."""
    code = (
        "import gc, sys\n"
        "if sys.argv[1] == 'off': gc.disable()\n"
        "import nova_pipeline.definitions\n"
        "print(gc.isenabled(), gc.get_freeze_count())"
    )
    for before, enabled in (("on", "True"), ("off", "False")):
        out = subprocess.run([sys.executable, "-c", code, before], capture_output=True, text=True, check=True)
        state, frozen = out.stdout.split()
        assert state == enabled and int(frozen) > 50_000, out.stdout

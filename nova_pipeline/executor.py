"""The executor of every job of the code location: in one process, in processes, or on Celery workers.

One executor definition with a choice in its config, as Dagster's own ``multi_or_in_process_executor`` does
for its two modes, extended with ``celery`` (``dagster_celery``'s executor; workers are started with
``dagster-celery worker start``). A run picks its mode in its run config::

    execution:
      config:
        celery:
          broker: redis://redis:6379/0
          backend: redis://redis:6379/1

and runs that say nothing (schedules, sensors, the UI's "Materialize") get the default from the environment
of the code location: ``NOVA_EXECUTOR`` = ``in_process`` (the default: one machine, one process, see README
"The warm path"), ``multiprocess`` or ``celery`` (broker and backend from ``NOVA_CELERY_BROKER`` and
``NOVA_CELERY_BACKEND``). On Kubernetes, ``dagster_k8s.k8s_job_executor`` takes this place (README, "Scaling
out").
"""

import os

import dagster as dg

# Dagster's own building blocks of multi_or_in_process_executor (no public API composes executors).
from dagster._core.definitions.executor_definition import (
    IN_PROC_CONFIG,
    MULTI_PROC_CONFIG,
    _core_in_process_executor_creation,
    _core_multiprocess_executor_creation,
    multiple_process_executor_requirements,
)

MODES = ("in_process", "multiprocess", "celery")


def _celery_schema() -> dg.Field:
    from dagster_celery.executor import CELERY_CONFIG

    return dg.Field(CELERY_CONFIG, description="A Celery task per step (dagster_celery's executor).")


def default_mode_config(env=os.environ) -> dict:
    """The executor config a run gets when it gives none, from ``NOVA_EXECUTOR`` and ``NOVA_CELERY_*``.

    Raises:
        ValueError: ``NOVA_EXECUTOR`` names no mode of :data:`MODES`.
    """
    mode = (env.get("NOVA_EXECUTOR") or "in_process").strip()
    if mode not in MODES:
        raise ValueError(f"NOVA_EXECUTOR={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "celery":
        broker = env.get("NOVA_CELERY_BROKER") or "redis://localhost:6379/0"
        return {"celery": {"broker": broker, "backend": env.get("NOVA_CELERY_BACKEND") or broker}}
    return {mode: {}}


def _requirements(executor_config):
    if "in_process" in executor_config:
        return []
    return multiple_process_executor_requirements()


@dg.executor(
    name="nova_executor",
    config_schema=dg.Field(
        dg.Selector(
            {
                "in_process": IN_PROC_CONFIG,
                "multiprocess": MULTI_PROC_CONFIG,
                "celery": _celery_schema(),
            }
        ),
        default_value=default_mode_config(),
    ),
    requirements=_requirements,
)
def nova_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """In one process, in a process per step, or a Celery task per step (see the module docstring)."""
    cfg = init_context.executor_config
    if "celery" in cfg:
        from dagster._core.execution.retries import RetryMode
        from dagster_celery.executor import CeleryExecutor

        c = cfg["celery"]
        return CeleryExecutor(
            broker=c.get("broker"),
            backend=c.get("backend"),
            include=c.get("include"),
            config_source=c.get("config_source"),
            retries=RetryMode.from_config(c["retries"]),
        )
    if "multiprocess" in cfg:
        return _core_multiprocess_executor_creation(cfg["multiprocess"])
    return _core_in_process_executor_creation(cfg["in_process"])

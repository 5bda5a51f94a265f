"""The executor of every job of the code location: in one process, in processes, or on Celery workers.

Built from Dagster's public executors only, chosen by ``NOVA_EXECUTOR`` when the definitions load (Dagster
needs the executor at definition time, so this is one of the few settings read at import):

* ``in_process`` (the default: one machine, one process, see README "The warm path") and ``multiprocess``:
  Dagster's ``multi_or_in_process_executor``, whose run config selects either mode per run::

      execution:
        config:
          multiprocess:
            max_concurrent: 2

  Runs that say nothing (schedules, sensors, the UI's "Materialize") get ``NOVA_EXECUTOR``'s mode.
* ``celery``: ``dagster_celery``'s ``celery_executor``, a Celery task per step (workers are started with
  ``dagster-celery worker start``); broker and backend default to ``NOVA_CELERY_BROKER`` and
  ``NOVA_CELERY_BACKEND``, and a run may name others::

      execution:
        config:
          celery:
            broker: redis://redis:6379/0
            backend: redis://redis:6379/1

On Kubernetes, ``dagster_k8s.k8s_job_executor`` takes this place (README, "Scaling out").
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

__all__ = ["MODES", "_default_mode_config", "nova_executor"]

MODES = ("in_process", "multiprocess", "celery")
DEFAULT_BROKER = "redis://localhost:6379/0"


def _default_mode_config(env: Mapping[str, str] | None = None) -> dict:
    """The executor config a run gets when it gives none, from ``NOVA_EXECUTOR`` and ``NOVA_CELERY_*``.

    Raises:
        ValueError: ``NOVA_EXECUTOR`` names no mode of :data:`MODES`.
    """
    env = os.environ if env is None else env
    mode = (env.get("NOVA_EXECUTOR") or "in_process").strip()
    if mode not in MODES:
        raise ValueError(f"NOVA_EXECUTOR={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "celery":
        broker = env.get("NOVA_CELERY_BROKER") or DEFAULT_BROKER
        return {"celery": {"broker": broker, "backend": env.get("NOVA_CELERY_BACKEND") or broker}}
    return {mode: {}}


def executor_for(env: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor of ``NOVA_EXECUTOR`` (see the module docstring), named ``nova_executor``.

    Raises:
        ValueError: ``NOVA_EXECUTOR`` names no mode of :data:`MODES`.
    """
    default = _default_mode_config(env)
    if "celery" in default:
        from dagster_celery import celery_executor

        celery_default = default["celery"]
        return celery_executor.configured(
            lambda cfg: cfg["celery"],
            name="nova_executor",
            config_schema={
                "celery": dg.Field(
                    dg.Permissive(
                        {
                            "broker": dg.Field(str, default_value=celery_default["broker"]),
                            "backend": dg.Field(str, default_value=celery_default["backend"]),
                        }
                    ),
                    default_value={},
                    description="dagster_celery's executor config (broker, backend, include, retries...).",
                )
            },
            description="A Celery task per step (dagster_celery's executor).",
        )
    return dg.multi_or_in_process_executor.configured(
        lambda cfg: cfg,
        name="nova_executor",
        config_schema=dg.Field(
            dg.Selector({"in_process": dg.Permissive(), "multiprocess": dg.Permissive()}),
            default_value=default,
            description="in_process (one process) or multiprocess (a process per step), with the settings of "
            "Dagster's executor of that name.",
        ),
        description="In one process, or a process per step (Dagster's multi_or_in_process_executor).",
    )


# Read at import: Dagster needs the executor when the definitions load.
nova_executor = executor_for()

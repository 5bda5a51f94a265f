"""Dagster-side foundations shared by ``defs``, ``service`` and ``cli``: the executor, the instance and the
run-event stream. Imports ``core`` and Dagster; nothing in ``core`` imports it.
"""

__all__ = ["executor", "instance", "run_events"]

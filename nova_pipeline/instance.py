"""What nova_pipeline needs to know about the Dagster instance (``DAGSTER_HOME/dagster.yaml``).

Dagster-side helpers shared by the assets, the CLI and the service; ``core`` never imports this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _resolve_env(value: Any) -> Any:
    """Replace Dagster's ``{"env": NAME}`` config values by the variable's value (empty when unset)."""
    if isinstance(value, Mapping):
        if set(value) == {"env"}:
            return os.environ.get(str(value["env"]), "")
        return {k: _resolve_env(v) for k, v in value.items()}
    return value


def postgres_url(instance) -> str | None:
    """The ``postgresql://`` URL of the instance's database, from its config, or None when it does not use
    PostgreSQL (e.g. the default SQLite instance).

    Reads the storage section of the instance's ``dagster.yaml`` (``storage: postgres:`` or
    ``run_storage: ...PostgresRunStorage``) through the instance ref, resolving ``env:`` values the way
    Dagster does (``DAGSTER_PG_*`` in this project's ``dagster.postgres.yaml``), and builds the URL with
    dagster-postgres' own ``pg_url_from_config``.
    """
    ref = instance.get_ref()
    for data in (ref.storage_data, ref.run_storage_data):
        if data is None or not data.module_name.startswith("dagster_postgres"):
            continue
        from dagster_postgres.utils import pg_url_from_config

        config = _resolve_env(dict(data.config_dict))
        return pg_url_from_config(config)
    return None

"""Shared fixtures: real Postgres databases, the real standard library, isolated NOVA_HOME/DAGSTER_HOME."""

from __future__ import annotations

import os
import shutil
import sysconfig
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
PG_HOST = os.environ.get("NOVA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NOVA_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("NOVA_TEST_PG_USER", "postgres")


@pytest.fixture
def stdlib() -> Path:
    """The standard library of the running interpreter: real code nobody here wrote."""
    return STDLIB


@pytest.fixture
def stdlib_tree(tmp_path: Path) -> Path:
    """A copy of a few real standard-library packages (json/, email/) as a source tree."""
    root = tmp_path / "src"
    for pkg in ("json", "email"):
        shutil.copytree(STDLIB / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture
def nova_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A private NOVA_HOME and DAGSTER_HOME (SQLite instance) for one test."""
    home = tmp_path / "nova_home"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("NOVA_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.delenv("NOVA_CHROMA_URL", raising=False)
    monkeypatch.delenv("NOVA_IGNORE", raising=False)
    return {"home": home, "dagster_home": dagster_home}


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname)
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database on the real server, dropped after the test. Yields its connection env."""
    name = f"nova_test_{uuid.uuid4().hex[:12]}"
    conn = _pg_connect()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DAGSTER_PG_HOST": PG_HOST,
            "DAGSTER_PG_PORT": str(PG_PORT),
            "DAGSTER_PG_DB": name,
            "DAGSTER_PG_USER": PG_USER,
            "DAGSTER_PG_PASSWORD": "",
        }
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def pg_query():
    """Run a query on a database of the real server and return all rows."""

    def run(dbname: str, sql: str, params=()):
        conn = _pg_connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    return run

"""Shared fixtures: real Postgres databases, the real standard library, isolated NOVA_HOME/DAGSTER_HOME."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
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


class FakeEmbedder:
    """Deterministic hash-based unit vectors: for unit tests only, never the product's default."""

    dimension = 384
    max_seq_length = 256
    fingerprint = "fake-embedder-v1"

    def __init__(self, trim: bool = False):
        """``trim``: hash each text without its surrounding white space (another fingerprint), so that a query
        of a chunk's exact text, trimmed as ``nova serve`` trims queries, finds that chunk first."""
        self.calls = 0
        self.texts = 0
        self.trim = trim
        if trim:
            self.fingerprint = "fake-embedder-trim-v1"

    def embed(self, texts):
        import blake3
        import numpy as np

        self.calls += 1
        self.texts += len(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            raw = blake3.blake3((t.strip() if self.trim else t).encode()).digest(length=self.dimension * 4)
            v = np.frombuffer(raw, dtype=np.uint32).astype(np.float32) / 2**32 - 0.5
            out[i] = v / np.linalg.norm(v)
        return out


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


def fake_embedder_resource(embedder: FakeEmbedder | None = None):
    """An EmbedderResource whose model is ``embedder`` (default: the shared FakeEmbedder); the tokenizer stays
    the real one."""
    from nova_pipeline.defs.resources import EmbedderResource

    model = embedder or _FAKE

    class FakeEmbedderResource(EmbedderResource):
        def get_embedder(self):
            return model

        def fingerprint(self) -> str:
            return model.fingerprint

    return FakeEmbedderResource()


_FAKE = FakeEmbedder()


@pytest.fixture
def json_tree(tmp_path: Path) -> Path:
    """A copy of the standard library's json/ package: small enough to embed in seconds."""
    root = tmp_path / "json_src"
    shutil.copytree(STDLIB / "json", root / "json", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run_dagster_cli(args, env_extra, cwd, timeout=900, **popen):
    """Run ``python -m dagster ...`` with a clean NOVA_/DAGSTER_ environment plus ``env_extra``."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}
    env.update({k: str(v) for k, v in env_extra.items()})
    return subprocess.run(
        [sys.executable, "-m", "dagster", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def build_home(src: Path, home: Path, embedder=None):
    """Scan, store and index ``src`` into ``home`` with the real store, tokenizer and Chroma, and the fake
    embedder (fast): the state golden copies and backups are made from. Returns the chunks table."""
    from nova_pipeline.core.compression.dictionary import (
        DictionaryOptions,
        DictionaryRegistry,
        build_for_tree,
    )
    from nova_pipeline.core.compression.store import ContentStore, update_store
    from nova_pipeline.core.index import lexical
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.index.reconcile import reconcile
    from nova_pipeline.core.index.vector_store import get_collection, open_client
    from nova_pipeline.core.ingest.manifest import scan, unique_contents
    from nova_pipeline.core.ingest.walk import ScanOptions
    from nova_pipeline.core.tables import write_table

    embedder = embedder or _FAKE
    manifest = scan(ScanOptions(src)).manifest
    write_table(home, "source_files", manifest)
    info, _, _ = build_for_tree(
        unique_contents(src, manifest), DictionaryRegistry(home), DictionaryOptions(dict_size=16_384)
    )
    update_store(ContentStore(home), src, manifest, info.blake3)
    tok = Tokenizer()
    chunks, _ = chunk_manifest(src, manifest, None, tok.count, tok.max_seq_length)
    write_table(home, "source_chunks", chunks)
    col = get_collection(open_client(home), embedder.fingerprint)
    reconcile(col, chunks, embedder, EmbeddingCache(home, embedder.fingerprint))
    lexical.update(home, chunks)
    return chunks


def inject_crash(monkeypatch, targets, fail_at):
    """Make the ``fail_at``-th call among ``targets`` [(owner, attribute)] raise OSError (a simulated crash).

    Returns the call counter, so a caller knows when ``fail_at`` was past the last step.
    """
    calls = {"n": 0}
    for owner, attr in targets:
        real = getattr(owner, attr)

        def wrapper(*a, _real=real, _name=attr, **k):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise OSError(5, f"injected crash at {_name}")
            return _real(*a, **k)

        monkeypatch.setattr(owner, attr, wrapper)
    return calls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chroma(data_dir: Path, log_path: Path, port: int | None = None, timeout: float = 60):
    """Start a real `chroma run` on loopback (a free port unless given); returns ``(url, process)``.

    Raises:
        RuntimeError: it did not answer a heartbeat within ``timeout`` seconds (its log is in the message).
    """
    from nova_pipeline.core.index.vector_store import open_client

    port = port or free_port()
    chroma = Path(sys.executable).with_name("chroma")
    log = open(log_path, "a")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            open_client(log_path.parent, url).heartbeat()
            return url, proc
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None:
                raise RuntimeError(log_path.read_text()) from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"chroma run did not come up in {timeout:.0f} s: {log_path.read_text()[-2000:]}")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process started by a test: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def chroma_server_proc(tmp_path):
    """A real `chroma run` server on a free loopback port: ``(url, process)``; stopped afterwards."""
    url, proc = start_chroma(tmp_path / "server-data", tmp_path / "chroma.log")
    yield url, proc
    stop(proc)


@pytest.fixture
def chroma_server(chroma_server_proc):
    """The URL of a real `chroma run` server on a free loopback port, stopped afterwards."""
    return chroma_server_proc[0]


def rebuild_graph():
    """The assets of the ``rebuild`` job (their checks run inside them), for ``dg.materialize`` with test
    resources."""
    from nova_pipeline.definitions import defs

    job = defs.resolve_job_def("rebuild")
    keys = job.asset_layer.executable_asset_keys
    return [a for a in defs.assets if set(a.keys) & keys]


def resources_for(src, home, embedder=None, **nova_fields) -> dict:
    """The resources of a job, for tests: ``src`` and ``home`` as the settings, the IO manager on the same
    settings, the guard, and the fake embedder unless ``embedder`` (e.g. the real ``EmbedderResource()``)."""
    from nova_pipeline.defs.resources import NovaSettings, resources_on

    nova = NovaSettings(source_dir=str(src) if src else "", nova_home=str(home), **nova_fields)
    return resources_on(nova, embedder or fake_embedder_resource())


def materialize_rebuild(src, home, instance, embedder=None, run_config=None, **kwargs):
    """Materialize the whole ``rebuild`` selection on ``src`` into ``home`` (fake embedder by default)."""
    import dagster as dg

    return dg.materialize(
        rebuild_graph(),
        resources=resources_for(src, home, embedder),
        instance=instance,
        run_config=run_config or {},
        **kwargs,
    )


def asset_metadata(result, asset: str) -> dict:
    """The last materialization metadata of ``asset`` in a result, as plain values."""
    mats = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in mats[-1].metadata.items()} if mats else {}


def start_process(args: list[str], env: dict, log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start a long-running process of the product (a server, the daemon) with ``env`` on top of a clean
    environment (no NOVA_/DAGSTER_ variables of the caller); its output goes to ``log_path``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}
    log = open(log_path, "a")
    return subprocess.Popen(
        args,
        env={**base, **{k: str(v) for k, v in env.items()}},
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "a condition"):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass.

    Raises:
        TimeoutError: naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def http_json(url: str, timeout: float = 10.0):
    """GET ``url``; ``(status, parsed JSON)``, or ``(None, error text)`` when nothing answered."""
    import httpx

    try:
        r = httpx.get(url, timeout=timeout)
        return r.status_code, r.json()
    except (httpx.HTTPError, ValueError) as exc:
        return None, str(exc)


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process started with :func:`start_process` and its children (its session): SIGTERM, then
    SIGKILL."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread of the test process: real HTTP, real
    Host headers, one event loop. ``url`` is its base URL; :meth:`stop` shuts it down (the app's lifespan
    ends)."""

    def __init__(self, app, port: int | None = None):
        import threading

        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="test-uvicorn")

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def run_python(code: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a separate Python process (another process than the test's, as a writer of a real
    deployment is), with ``env`` added to the environment; fails the test with its output if it fails."""
    full = {**os.environ, "ANONYMIZED_TELEMETRY": "False", **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc

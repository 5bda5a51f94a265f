"""The deployment of docker/ as real processes on loopback, and the compose file checked against the image.

No Docker engine runs here, so docker-compose.yml is checked, not started: every service's command must be
a real entry point (and subcommand) of what the image installs, every file it names must exist, every
variable it needs must be in .env.example. The same topology then runs as processes: a fresh Postgres
database behind docker/dagster.yaml, `chroma run`, `redis-server`, the gRPC code server, the webserver on
docker/workspace.yaml, the daemon and two Celery workers; a rebuild submitted through the webserver's GraphQL
API runs its steps on both workers.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nova_pipeline_tests.conftest import (
    REPO_ROOT,
    free_port,
    start_chroma,
    start_process,
    stop,
    stop_group,
    wait_until,
)

DOCKER = REPO_ROOT / "docker"
BIN = Path(sys.executable).parent
SERVICES = {"postgres", "chroma", "redis", "user_code", "webserver", "daemon", "celery_worker", "nova_serve"}
IMAGE_HOME = "/opt/dagster/dagster_home/"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_names_every_service_with_a_real_entry_point_of_the_image():
    spec = compose()
    services = spec["services"]
    assert set(services) == SERVICES
    ours = {n: s for n, s in services.items() if s.get("image") == "nova_pipeline:latest"}
    assert set(ours) == SERVICES - {"postgres", "redis"}
    for name, svc in ours.items():
        cmd = svc["command"]
        exe = BIN / cmd[0]
        assert exe.exists(), f"{name}: {cmd[0]} is no entry point installed with nova_pipeline"
        # the subcommand path (up to the first option) must exist: `<exe> <sub...> --help` exits 0
        words = []
        for c in cmd[1:]:
            if c.startswith("-"):
                break
            words.append(c)
        proc = subprocess.run([str(exe), *words, "--help"], capture_output=True, text=True, timeout=120)
        shown = " ".join([cmd[0], *words])
        assert proc.returncode == 0, f"{name}: `{shown} --help` failed: {proc.stderr[-500:]}"
        for flag, value in zip(cmd, cmd[1:]):
            if flag == "-m":  # a module the command imports
                __import__(value)
            if flag == "-A":
                assert value == "dagster_celery.app"
            if value.startswith(IMAGE_HOME):  # files baked into the image from docker/
                assert (DOCKER / value[len(IMAGE_HOME) :]).is_file(), f"{name}: {value} is not in docker/"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on a missing service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            assert source.startswith("$") or source in spec["volumes"], f"{name}: undeclared volume {source}"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["user_code"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # celery workers scale: nothing pins a container name or a host port
    assert "container_name" not in services["celery_worker"] and "ports" not in services["celery_worker"]


def test_compose_variables_come_from_env_example_and_the_instance_reads_them():
    text = (DOCKER / "docker-compose.yml").read_text()
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    needed = set(re.findall(r"(?<!\$)\$\{(\w+)\}", text))  # ${VAR} with no default ($$ escapes)
    assert needed <= set(example), f"missing from .env.example: {needed - set(example)}"
    env = compose()["x-nova"]["environment"]
    instance_vars = set(re.findall(r"env: (\w+)", (DOCKER / "dagster.yaml").read_text()))
    assert instance_vars <= set(env) | set(example), instance_vars - set(env) - set(example)
    workspace_vars = set(re.findall(r"env: (\w+)", (DOCKER / "workspace.yaml").read_text()))
    assert workspace_vars <= set(env)
    assert set(re.findall(r"env: (\w+)", (DOCKER / "celery.yaml").read_text())) <= set(env)


def test_dockerfile_pins_python_and_cpu_torch_and_drops_root():
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([\d.]+)"', pyproject).group(1)
    assert f"torch=={torch_pin}" in text and "whl/cpu" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for path in src.split():
            assert (REPO_ROOT / path).exists(), f"COPY {path}: missing"
    assert "HF_HUB_OFFLINE=1" in text


# ---- the topology on loopback ----------------------------------------------------------------------------


def _graphql_run_status(client, run_id):
    try:
        return client.get_run_status(run_id)
    except Exception:  # noqa: BLE001 - the webserver is still starting
        return None


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_deployment_runs_a_rebuild_over_two_celery_workers(json_tree, tmp_path, pg_database, monkeypatch):
    from dagster_graphql import DagsterGraphQLClient

    from nova_pipeline.core.index.embedding import bundled_fingerprint
    from nova_pipeline.core.index.vector_store import existing_ids, get_collection, open_client
    from nova_pipeline.core.tables import read_table

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    dhome, home = tmp_path / "dagster_home", tmp_path / "nova_home"
    dhome.mkdir()
    for name in ("dagster.yaml", "workspace.yaml", "celery.yaml"):  # the deployment's own files
        shutil.copy(DOCKER / name, dhome / name)
    redis_port, code_port, web_port = free_port(), free_port(), free_port()
    chroma_url, chroma = start_chroma(tmp_path / "chroma-data", tmp_path / "chroma.log")
    broker = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        **pg_database,
        "DAGSTER_HOME": str(dhome),
        "NOVA_HOME": str(home),
        "NOVA_SOURCE_DIR": str(json_tree),
        "NOVA_CHROMA_URL": chroma_url,
        "NOVA_CELERY_BROKER": broker,
        "NOVA_CELERY_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
        "NOVA_EXECUTOR": "celery",
        "NOVA_INDEX_SLICES": "2",
        "NOVA_CODE_SERVER_HOST": "127.0.0.1",
        "NOVA_CODE_SERVER_PORT": str(code_port),
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        # dagster-celery starts `celery` from PATH, as the image has it
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for k, v in env.items():  # this process reads the same instance
        monkeypatch.setenv(k, v)
    procs = [
        start_process(
            [
                redis_server,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            env,
            tmp_path / "redis.log",
        ),
        start_process(
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "-h",
                "127.0.0.1",
                "-p",
                str(code_port),
                "-m",
                "nova_pipeline.definitions",
            ],
            env,
            tmp_path / "code-server.log",
            cwd=tmp_path,
        ),
    ]
    try:
        wait_until(
            lambda: "Started Dagster code server" in (tmp_path / "code-server.log").read_text(),
            180,
            what="the code server",
        )
        procs += [
            start_process(
                [
                    str(BIN / "dagster-webserver"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(web_port),
                    "-w",
                    str(dhome / "workspace.yaml"),
                ],
                env,
                tmp_path / "webserver.log",
                cwd=tmp_path,
            ),
            start_process(
                [str(BIN / "dagster-daemon"), "run", "-w", str(dhome / "workspace.yaml")],
                env,
                tmp_path / "daemon.log",
                cwd=tmp_path,
            ),
        ]
        for worker in ("w1", "w2"):  # one step at a time each, one torch thread each
            procs.append(
                start_process(
                    [
                        str(BIN / "dagster-celery"),
                        "worker",
                        "start",
                        "-A",
                        "dagster_celery.app",
                        "-y",
                        str(dhome / "celery.yaml"),
                        "-n",
                        worker,
                        "--",
                        "--concurrency=1",
                    ],
                    {**env, "NOVA_EMBED_THREADS": "1"},
                    tmp_path / f"celery-{worker}.log",
                    cwd=tmp_path,
                )
            )
        wait_until(
            lambda: all("ready." in (tmp_path / f"celery-{w}.log").read_text() for w in ("w1", "w2")),
            120,
            what="two Celery workers",
        )
        client = DagsterGraphQLClient("127.0.0.1", port_number=web_port, timeout=60)
        wait_until(
            lambda: (
                _graphql_run_status(client, "00000000-0000-0000-0000-000000000000") is not None
                or "Serving dagster-webserver" in (tmp_path / "webserver.log").read_text()
            ),
            180,
            what="the webserver",
        )
        run_id = client.submit_job_execution(
            "rebuild",
            run_config={
                "execution": {"config": {"celery": {"broker": broker, "backend": env["NOVA_CELERY_BACKEND"]}}}
            },
        )
        # nova monitor follows the daemon's run from its event log, in another process
        monitor = subprocess.Popen(
            [str(BIN / "nova"), "monitor", run_id[:8], "--poll", "0.3"],
            env={**os.environ, **env},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        final = wait_until(
            lambda: (
                (s := _graphql_run_status(client, run_id))
                in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
                and s
            ),
            420,
            interval=2,
            what="the rebuild run",
        )
        monitored, _ = monitor.communicate(timeout=120)
        assert monitor.returncode == (0 if final == dg.DagsterRunStatus.SUCCESS else 1), monitored[-3000:]
        assert f"run {run_id}: {final.value}" in monitored and "embed" in monitored, monitored[-3000:]
        with dg.DagsterInstance.get() as instance:
            logs = instance.all_logs(run_id)
            if final != dg.DagsterRunStatus.SUCCESS:
                errors = [
                    e.dagster_event.event_specific_data
                    for e in logs
                    if e.dagster_event and e.dagster_event.is_step_failure
                ]
                pytest.fail(
                    f"rebuild ended {final}: {errors[:2]}\n"
                    + (tmp_path / "celery-w1.log").read_text()[-3000:]
                )
            # every step ran as a Celery task, and both workers took some
            by_worker: dict[str, set] = {}
            for e in logs:
                if e.dagster_event and e.dagster_event.is_engine_event:
                    md = e.dagster_event.engine_event_data.metadata
                    if "Celery worker" in md:
                        by_worker.setdefault(md["Celery worker"].value, set()).add(e.step_key)
            assert {w.split("@")[0] for w in by_worker} == {"w1", "w2"}, by_worker
            slices = {k for keys in by_worker.values() for k in keys if "reconcile_vector_slice" in k}
            assert len(slices) == 2

            # the daemon ticks the sensors that are on (the health sensor, on with NOVA_CHROMA_URL); a tick
            # still in progress (STARTED) has no outcome yet, so wait for one that has finished
            def finished_ticks():
                states = [
                    s for s in instance.all_instigator_state() if s.name == "primary_vector_store_health"
                ]
                if not states:
                    return None
                ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id)
                return [t for t in ticks if t.status.value != "STARTED"] or None

            ticks = wait_until(finished_ticks, 60, what="a finished tick of primary_vector_store_health")
            assert ticks[0].status.value in ("SKIPPED", "SUCCESS"), ticks[0]
        # the vectors are in the Chroma server: exactly the chunks
        chunks = read_table(home, "source_chunks")
        collection = get_collection(open_client(home, chroma_url), bundled_fingerprint(), create=False)
        assert existing_ids(collection) == set(chunks["chunk_id"])
    finally:
        for p in reversed(procs):
            stop_group(p)
        stop(chroma)
        time.sleep(0.2)
        os.environ.pop("DAGSTER_HOME", None)

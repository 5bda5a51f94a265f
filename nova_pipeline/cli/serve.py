"""The HTTP service and its tokens: nova serve, nova token create|list|revoke."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from nova_pipeline.cli.common import app, console, settings_from_env
from nova_pipeline.core.errors import NovaError

token_app = typer.Typer(
    help="API tokens of nova serve (stored hashed in NOVA_HOME/tokens.json).", no_args_is_help=True
)
app.add_typer(token_app, name="token")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind; other than loopback only with API tokens"),
    port: int = typer.Option(8765, help="TCP port"),
    log_level: str = typer.Option(
        None,
        "--log-level",
        help="console level (default: NOVA_LOG_LEVEL, else INFO); "
        "SIGUSR1 raises it one step, SIGUSR2 lowers it",
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="worker processes (each loads the model: about 0.4 GB more per worker)"
    ),
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="a host name clients may use in the Host header, besides loopback (repeatable; also "
            "NOVA_SERVE_HOSTS, comma-separated)",
        ),
    ] = None,
    watch: bool = typer.Option(
        False,
        "--watch",
        help="also keep the index live from file events (nova watch) in this process: one writer, and "
        "a reader that is never stale; needs NOVA_SOURCE_DIR",
    ),
) -> None:
    """Serve search over HTTP with failover, and the admin API.

    GET /search?q=&k=&mode=&path=&language=, /healthz, /status and /api/v1/admin/...; logs as JSON lines
    to NOVA_HOME/logs/nova.jsonl. SIGTERM or Ctrl-C stops it after the requests in flight."""
    import logging
    import signal

    import uvicorn

    from nova_pipeline.cli import logs
    from nova_pipeline.core.serving.failover import FailoverSettings
    from nova_pipeline.core.serving.tokens import TokenStore
    from nova_pipeline.service.app import allowed_hosts, create_app

    settings = settings_from_env()
    if host not in LOOPBACK and not TokenStore(settings.home).exists():
        raise NovaError(
            f"refusing to listen on {host} without API tokens: anyone could search and nobody could "
            "administer; create one with `nova token create --name NAME --role admin`, or keep the "
            "default 127.0.0.1"
        )
    level = logs.resolve_level(log_level, "INFO")
    logs.configure(settings.home, level)
    signal.signal(signal.SIGUSR1, lambda *_: logs.step_level(+1))
    signal.signal(signal.SIGUSR2, lambda *_: logs.step_level(-1))
    logging.getLogger("nova_pipeline.service").info(
        "nova serve starting on %s:%d (console level %s)", host, port, level
    )
    extra = ",".join([os.environ.get("NOVA_SERVE_HOSTS", ""), *(allow_host or [])])
    if host not in LOOPBACK and host not in ("0.0.0.0", "::"):
        extra += f",{host}"  # the address it listens on is a name its clients use
    os.environ["NOVA_SERVE_HOSTS"] = extra.strip(",")  # what every worker process reads
    if watch and workers != 1:
        raise NovaError("--watch needs --workers 1: the watcher is the one writer of the index")
    stop_watching = watcher = None
    if watch:
        from nova_pipeline.cli.live import watch_in_thread

        watcher, stop_watching = watch_in_thread()
    app_ = (
        create_app(
            settings,
            FailoverSettings.from_env(),
            hosts=allowed_hosts(extra),
            # one client: searches read the watcher's own, and see each update as soon as it is written
            shared_primary=watcher.live.client.reading if watcher is not None else None,
        )
        if workers == 1
        else None
    )
    console.print(
        f"nova serve on http://{host}:{port}  (GET /search?q=...&k=5, /context, /healthz, /status, "
        "/api/v1/admin/...; MCP at /mcp)"
    )
    if watcher is not None:
        console.print(f"watching {watcher.live.settings.source_dir}: saves are searchable within a second")
        # stopped in the app's shutdown: uvicorn re-raises SIGTERM once it has shut down, so code after
        # uvicorn.run does not run on SIGTERM
        app_.state.on_shutdown.append(stop_watching)
    if workers == 1:
        try:
            uvicorn.run(app_, host=host, port=port, log_level=level.lower())
        finally:
            if stop_watching is not None:
                stop_watching()  # a second call is a no-op
    else:  # each worker builds its own app, from the environment
        uvicorn.run(
            "nova_pipeline.service.app:app_from_env",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=level.lower(),
        )


@token_app.command("create")
def token_create(
    name: str = typer.Option(..., "--name", help="who or what uses it (shown in the audit log)"),
    role: str = typer.Option("viewer", "--role", help="viewer (search, read) or admin (also change things)"),
) -> None:
    """Create a token and print it once (only its salted scrypt hash is stored)."""
    from nova_pipeline.core.protect import audit
    from nova_pipeline.core.serving.tokens import TokenStore

    s = settings_from_env()
    token = TokenStore(s.home).create(name, role)
    audit.record(s.home, "token create", "ok", audit.actor(), name=name, role=role)
    console.print(f"token {name!r} ({role}); it is shown only now:", highlight=False)
    print(token)


@token_app.command("list")
def token_list() -> None:
    """Token names, roles and creation times (never the tokens)."""
    from nova_pipeline.core.serving.tokens import TokenStore

    for e in TokenStore(settings_from_env().home).entries():
        console.print(f"{e.name}  {e.role}  created {e.created_at}", highlight=False)


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="the token's name")) -> None:
    """Delete a token; a running service refuses it from its next request."""
    from nova_pipeline.core.protect import audit
    from nova_pipeline.core.serving.tokens import TokenStore

    s = settings_from_env()
    if not TokenStore(s.home).revoke(name):
        raise NovaError(f"no token named {name!r}: nova token list shows them")
    audit.record(s.home, "token revoke", "ok", audit.actor(), name=name)
    console.print(f"revoked {name!r}")


@app.command()
def mcp() -> None:
    """Serve the index to agents over the Model Context Protocol on stdio (tools: search, context, status).

    For an MCP client that launches it, e.g. in its configuration: {"command": "nova", "args": ["mcp"],
    "env": {"NOVA_HOME": "/path/to/.nova"}}. Every answer says which store answered and, from a backup,
    how stale it is. Logs go to NOVA_HOME/logs (stdout is the protocol's)."""
    import logging

    from nova_pipeline.cli import logs
    from nova_pipeline.service.mcp_server import build_server

    settings = settings_from_env()
    logs.configure(settings.home, "ERROR")
    logging.getLogger("nova_pipeline.service").info(
        "nova mcp starting on stdio (NOVA_HOME=%s)", settings.home
    )
    build_server(settings).run("stdio")

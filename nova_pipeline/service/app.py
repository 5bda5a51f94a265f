"""The Starlette app behind ``nova serve``.

``GET /search?q=&k=&mode=&path=&language=``  JSON hits (hybrid by default; each with its vector score,
                        lexical score and matched terms), the store that answered, and ``stale_as_of`` for
                        a backup answer. ``k`` is 1 to 100; anything else is a 400.
``GET /healthz``       ``{"ok": true}`` (200) when a real query, bounded in time, is answered by the primary
                       or the backup store; ``{"ok": false}`` (503) otherwise. Open to load balancers, and
                       it says nothing else.
``GET /status``        the failover pointer, the service's breaker, the backup store and its resource
                       estimate (viewer).

The model is loaded once, at startup, and the backup store, when the resource zone keeps it in memory, is
loaded in the background (the on-disk copy answers until it is ready). Searches go through one
:class:`~nova_pipeline.core.serving.searcher.Searcher`: queries run concurrently, each with a deadline of
``NOVA_QUERY_TIMEOUT`` from its arrival; a primary query that fails, runs past the deadline or finds no
index is answered from the backup store in the same request, so a dead primary costs no failed search.
Embedded stores are read through views reopened when another process wrote (:mod:`nova_pipeline.core.
serving.views`): the service never writes to them except through the admin routes, under the writer lock.

Only the hosts in ``NOVA_SERVE_HOSTS`` (comma-separated, added to 127.0.0.1, localhost and ::1) may be named
in the ``Host`` header (Starlette's ``TrustedHostMiddleware``): a page on another site cannot reach a
loopback service through DNS rebinding. Authentication and audit: :mod:`.auth`; admin routes: :mod:`.admin`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nova_pipeline.core.errors import IndexNotBuiltError, InvalidRequestError, NovaError
from nova_pipeline.core.index.ranking import MODES
from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline.core.serving.search_api import hit_json
from nova_pipeline.core.serving.searcher import Searcher, SearchResult
from nova_pipeline.core.serving.tokens import TokenStore
from nova_pipeline.core.settings import Settings
from nova_pipeline.service.auth import Gate, error

__all__ = ["LOOPBACK_HOSTS", "allowed_hosts", "app_from_env", "create_app"]

log = logging.getLogger("nova_pipeline.service")
MAX_K = 100
MAX_QUERY_CHARS = 2000
MAX_CONTEXT_TOKENS = 100_000  # a context larger than any model window is a mistake or an attack
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
NOT_BUILT = "nothing is indexed yet: run the rebuild job (make rebuild, or nova rebuild --source TREE)"


def allowed_hosts(extra: str | None = None) -> list[str]:
    """Host names the service answers to: loopback, plus ``extra`` (default ``NOVA_SERVE_HOSTS``)."""
    raw = os.environ.get("NOVA_SERVE_HOSTS", "") if extra is None else extra
    return [*LOOPBACK_HOSTS, *(h.strip().lower() for h in raw.split(",") if h.strip())]


def _serve_torch_threads() -> int:
    """torch threads of the service's query model: ``NOVA_SERVE_TORCH_THREADS``, else 1.

    Raises:
        SettingsError: not a whole number of at least 1.
    """
    from nova_pipeline.core.errors import SettingsError

    raw = os.environ.get("NOVA_SERVE_TORCH_THREADS", "1").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"NOVA_SERVE_TORCH_THREADS={raw!r}: expected a whole number of at least 1")
    return int(raw)


def _result_json(query: str, result: SearchResult, seconds: float) -> dict:
    """The JSON body of a search answer."""
    return {
        "query": query,
        "store": result.store,
        "stale_as_of": result.stale_as_of,
        "fell_back": result.fell_back,
        "primary_error": result.primary_error or None,
        "seconds": round(seconds, 4),
        "mode": result.mode,
        "hits": [hit_json(h) for h in result.hits],
    }


def _search_params(request: Request) -> tuple[str, int, str, str | None, str | None, bool] | JSONResponse:
    """``(q, k, mode, path, language, collapse)`` of a search request, or its 400."""
    q = request.query_params.get("q", "").strip()
    if not q:
        return error(400, "missing query: /search?q=your+question&k=5")
    if len(q) > MAX_QUERY_CHARS:
        return error(400, f"the query is longer than {MAX_QUERY_CHARS} characters")
    raw_k = request.query_params.get("k", "5")
    try:
        k = int(raw_k)
    except ValueError:
        return error(400, f"k must be a whole number from 1 to {MAX_K}")
    if not 1 <= k <= MAX_K:
        return error(400, f"k must be from 1 to {MAX_K}, not {k}")
    mode = request.query_params.get("mode", "hybrid")
    if mode not in MODES:
        return error(400, f"mode must be one of {', '.join(MODES)}")
    path = request.query_params.get("path") or None
    language = request.query_params.get("language") or None
    if (path and len(path) > 500) or (language and len(language) > 50):
        return error(400, "path or language is too long")
    raw_collapse = request.query_params.get("collapse", "true")
    if raw_collapse not in ("true", "false"):
        return error(400, "collapse must be true or false")
    return q, k, mode, path, language, raw_collapse == "true"


def create_app(
    settings: Settings,
    failover: FailoverSettings | None = None,
    embedder=None,
    hosts: list[str] | None = None,
    shared_primary=None,
) -> Starlette:
    """The service for ``settings``; ``embedder`` defaults to the bundled model (loaded at startup); ``hosts``
    (default :func:`allowed_hosts`) are the ``Host`` names it answers to; ``shared_primary`` is the watcher's
    client when it runs in this process (``nova serve --watch``; see :class:`Searcher`).

    When ``NOVA_HOME/tokens.json`` exists at startup, ``/search`` and ``/status`` need a viewer token too
    (see :mod:`.auth`); ``/healthz`` stays open and says only whether searches can be answered.
    """
    from nova_pipeline.service.admin import admin_routes

    failover = failover or FailoverSettings.from_env()
    if embedder is not None:
        searcher = Searcher(settings, embedder, failover, prefer_memory=True, shared_primary=shared_primary)
    else:  # the active model, followed across nova model switch without a restart
        from nova_pipeline.core.index.embedding import LazyEmbedder
        from nova_pipeline.core.serving.model_switch import FollowingSearcher

        # one torch thread per forward pass: concurrent requests use the cores (bench_serve: 4 clients gave
        # 1.86x one client's throughput with 1 thread, 1.37x with torch's default of one per core)
        searcher = FollowingSearcher(
            settings.home,
            lambda d: Searcher(
                settings,
                LazyEmbedder(d, threads=_serve_torch_threads(), home=settings.home),
                failover,
                prefer_memory=True,
                shared_primary=shared_primary,
            ),
        )
    tokens = TokenStore(settings.home)
    gate = Gate(settings.home, tokens)

    async def search(request: Request) -> JSONResponse:
        started = time.perf_counter()
        deadline = time.monotonic() + failover.query_timeout_s  # the whole request's, waiting included
        caller = await gate.check(request, "viewer", "search")
        if isinstance(caller, JSONResponse):
            return caller
        params = _search_params(request)
        if isinstance(params, JSONResponse):
            return params
        q, k, mode, path, language, collapse = params
        try:
            result = await run_in_threadpool(searcher.search, q, k, mode, path, language, deadline, collapse)
        except InvalidRequestError as exc:
            return error(400, str(exc), settings.home)
        except IndexNotBuiltError as exc:
            log.warning("search before anything was built: %s", exc)
            return error(503, NOT_BUILT)
        except NovaError as exc:
            log.error("search failed: %s", exc)
            return error(503, f"no store can answer now: {exc}", settings.home, **{"Retry-After": "5"})
        return JSONResponse(_result_json(q, result, time.perf_counter() - started))

    def _status() -> dict:
        from nova_pipeline.core.protect import golden

        state = read_state(settings.home)
        cur = golden.current_version(settings.home)
        backup = searcher.backup
        return {
            "pointer": {k: v for k, v in asdict(state).items() if k != "recovered_from"},
            "pointer_recovered_from": state.recovered_from or None,
            "service_breaker": searcher.breaker.current_state,
            "golden_current": {"version": cur.name, "created_at": cur.created_at, "vectors": cur.count}
            if cur
            else None,
            "backup_store": {
                "version": backup.version,
                "kind": backup.kind,
                "stale_as_of": backup.created_at,
                "estimate": backup.estimate.as_metadata() if backup.estimate else None,
            },
            "primary": "Chroma server" if settings.chroma_url else "embedded (NOVA_HOME/vectors)",
        }

    async def context(request: Request):
        """``GET /context?q=&max_tokens=2000&format=markdown|json&k=&path=&language=``: the context for an
        LLM prompt (the embedding model's word pieces count the budget; no tokenizer is loaded from a
        request)."""
        from starlette.responses import PlainTextResponse

        from nova_pipeline.core.serving.context import build_context

        caller = await gate.check(request, "viewer", "context")
        if isinstance(caller, JSONResponse):
            return caller
        params = _search_params(request)
        if isinstance(params, JSONResponse):
            return params
        q, k, mode, path, language, _ = params
        fmt = request.query_params.get("format", "markdown")
        try:
            budget = int(request.query_params.get("max_tokens", "2000"))
        except ValueError:
            return error(400, "max_tokens must be a whole number")
        if not 1 <= budget <= MAX_CONTEXT_TOKENS or fmt not in ("markdown", "json"):
            return error(400, f"max_tokens must be from 1 to {MAX_CONTEXT_TOKENS}; format markdown or json")
        try:
            ctx = await run_in_threadpool(
                build_context, searcher, q, budget, None, max(k, 20), mode, path, language
            )
        except InvalidRequestError as exc:
            return error(400, str(exc), settings.home)
        except IndexNotBuiltError:
            return error(503, NOT_BUILT)
        except NovaError as exc:
            return error(503, f"no store can answer now: {exc}", settings.home, **{"Retry-After": "5"})
        if fmt == "json":
            return JSONResponse(ctx.as_json())
        headers = {"X-Tokens-Used": str(ctx.tokens_used), "X-Store": ctx.store}
        if ctx.stale_as_of:
            headers["X-Stale-As-Of"] = ctx.stale_as_of
        return PlainTextResponse(ctx.markdown(), headers=headers, media_type="text/markdown")

    graph_cache: dict[str, tuple] = {}  # the loaded code graph, with the mtimes it was loaded at

    def _graph():
        from nova_pipeline.core.index import graph as code_graph
        from nova_pipeline.core.tables import CODE_RELATIONS, CODE_SYMBOLS, table_path

        stamp = tuple(
            table_path(settings.home, t).stat().st_mtime_ns if table_path(settings.home, t).exists() else 0
            for t in (CODE_SYMBOLS, CODE_RELATIONS)
        )
        cached = graph_cache.get("g")
        if cached is None or cached[0] != stamp:
            graph_cache["g"] = (stamp, code_graph.load(settings.home))  # another process rebuilt it
        return graph_cache["g"][1]

    async def graph(request: Request) -> JSONResponse:
        """``GET /graph/{callers|callees|imports}?name=``: sites from the code graph (see ``nova graph``)."""
        from nova_pipeline.core.errors import TableNotMaterializedError

        caller = await gate.check(request, "viewer", "graph")
        if isinstance(caller, JSONResponse):
            return caller
        kind, name = request.path_params["kind"], request.query_params.get("name", "").strip()
        if kind not in ("callers", "callees", "imports") or not name or len(name) > 500:
            return error(
                400, "use /graph/callers, /graph/callees or /graph/imports with ?name= (1-500 chars)"
            )
        try:
            g = await run_in_threadpool(_graph)
            qual, sites = await run_in_threadpool(g.query, kind, name)
        except InvalidRequestError as exc:
            return error(404 if "no symbol" in str(exc) else 400, str(exc), settings.home)
        except TableNotMaterializedError:
            return error(503, "no code graph yet: run the rebuild job", **{"Retry-After": "60"})
        return JSONResponse({"symbol": qual, "kind": kind, "sites": sites[:1000], "total": len(sites)})

    async def healthz(request: Request) -> JSONResponse:
        ok = await run_in_threadpool(searcher.healthy, failover.query_timeout_s)
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    async def status(request: Request) -> JSONResponse:
        caller = await gate.check(request, "viewer", "status")
        if isinstance(caller, JSONResponse):
            return caller
        return JSONResponse(await run_in_threadpool(_status))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error: the service log (NOVA_HOME/logs) has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(searcher.embed_query, "warm up")  # load the model before the first query
        searcher.backup.preload()  # in the background, when the zone keeps the backup store in memory
        log.info(
            "nova serve ready: primary %s, pointer %s, tokens %s",
            "Chroma server" if settings.chroma_url else "embedded",
            read_state(settings.home).active,
            "required" if gate.required else "not required (loopback only)",
        )
        async with mcp_lifespan():
            yield
        for stop in app.state.on_shutdown:  # e.g. nova serve --watch's watcher, before the process exits
            await run_in_threadpool(stop)
        searcher.close()

    from nova_pipeline.service.mcp_server import http_endpoint

    mcp_app, mcp_lifespan = http_endpoint(settings, searcher, gate, hosts or allowed_hosts())
    app = Starlette(
        routes=[
            Route("/mcp", mcp_app, methods=["GET", "POST", "DELETE"]),  # agents: Model Context Protocol
            Route("/search", search),
            Route("/context", context),
            Route("/graph/{kind}", graph),
            Route("/healthz", healthz),
            Route("/status", status),
            *admin_routes(settings, gate, searcher),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts or allowed_hosts())],
        exception_handlers={Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.searcher = searcher
    app.state.on_shutdown = []  # callables run (in a thread) when the service stops, before searcher.close
    app.state.settings = settings
    app.state.gate = gate
    return app


def app_from_env() -> Starlette:
    """The service from the environment alone (``NOVA_HOME``, ``NOVA_CHROMA_URL``, ``NOVA_SERVE_HOSTS``...):
    the factory each uvicorn worker process calls when ``nova serve --workers N`` runs several."""
    return create_app(Settings.from_env(require_source=False), FailoverSettings.from_env())

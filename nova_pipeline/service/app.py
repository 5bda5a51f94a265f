"""The Starlette app behind ``nova serve``.

``GET /search?q=&k=&mode=&path=&language=``  JSON hits (hybrid by default; each with its vector score,
                        lexical score and matched terms), the store that answered, and ``stale_as_of`` for
                        a backup answer;
``GET /healthz``       200 when the service can answer a search (primary or backup), else 503;
``GET /status``        the failover pointer, the service's breaker, the backup store and its resource
                       estimate.

The model is loaded once, at startup. Searches go through one
:class:`~nova_pipeline.core.serving.searcher.Searcher`: a primary query that fails or exceeds
``NOVA_QUERY_TIMEOUT`` is answered from the backup store in the same request, so a dead primary costs no
failed search.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nova_pipeline.core.errors import IndexNotBuiltError, NovaError
from nova_pipeline.core.index.ranking import MODES
from nova_pipeline.core.protect import golden
from nova_pipeline.core.serving.failover import FailoverSettings
from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline.core.serving.searcher import Searcher, SearchResult, hit_json
from nova_pipeline.core.settings import Settings

log = logging.getLogger("nova_pipeline.service")
MAX_K = 100


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


def create_app(
    settings: Settings,
    failover: FailoverSettings | None = None,
    embedder=None,
) -> Starlette:
    """The service for ``settings``; ``embedder`` defaults to the bundled model (loaded at startup).

    When ``NOVA_HOME/tokens.json`` exists, ``/search`` and ``/status`` need a viewer token too; ``/healthz``
    stays open (for load balancers). See :mod:`nova_pipeline.service.admin` for the admin API.
    """
    from nova_pipeline.core.serving.tokens import TokenStore
    from nova_pipeline.service.admin import admin_routes, authorize

    searcher = Searcher(settings, embedder, failover, prefer_memory=True)
    tokens = TokenStore(settings.home)

    def refused(request: Request) -> JSONResponse | None:
        if not tokens.exists():
            return None  # no tokens: loopback only, searches open, admin calls refused
        return authorize(request, tokens, "viewer")[1]

    async def search(request: Request) -> JSONResponse:
        if (refusal := refused(request)) is not None:
            return refusal
        q = request.query_params.get("q", "").strip()
        if not q:
            return JSONResponse({"error": "missing query: /search?q=your+question&k=5"}, status_code=400)
        try:
            k = max(1, min(MAX_K, int(request.query_params.get("k", "5"))))
        except ValueError:
            return JSONResponse({"error": "k must be a whole number"}, status_code=400)
        mode = request.query_params.get("mode", "hybrid")
        if mode not in MODES:
            return JSONResponse({"error": f"mode must be one of {', '.join(MODES)}"}, status_code=400)
        path = request.query_params.get("path") or None
        language = request.query_params.get("language") or None
        started = time.perf_counter()
        try:
            result = await run_in_threadpool(searcher.search, q, k, mode, path, language)
        except IndexNotBuiltError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except NovaError as exc:
            log.error("search failed: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(_result_json(q, result, time.perf_counter() - started))

    def _status() -> dict:
        state = read_state(settings.home)
        cur = golden.current_version(settings.home)
        backup = searcher.backup
        return {
            "pointer": asdict(state),
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
            "primary": settings.chroma_url or str(settings.layout.vectors),
        }

    async def healthz(request: Request) -> JSONResponse:
        body = await run_in_threadpool(_status)
        state = read_state(settings.home)
        can_answer = golden.current_version(settings.home) is not None or not state.failed_over
        body["ok"] = can_answer
        return JSONResponse(body, status_code=200 if can_answer else 503)

    async def status(request: Request) -> JSONResponse:
        if (refusal := refused(request)) is not None:
            return refusal
        return JSONResponse(await run_in_threadpool(_status))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(lambda: searcher.embedder)  # load the model before the first query
        if read_state(settings.home).failed_over:
            with contextlib.suppress(NovaError):
                await run_in_threadpool(searcher.backup.collection)
        log.info(
            "nova serve ready: primary %s, pointer %s",
            settings.chroma_url or settings.layout.vectors,
            read_state(settings.home).active,
        )
        yield
        searcher.close()

    app = Starlette(
        routes=[
            Route("/search", search),
            Route("/healthz", healthz),
            Route("/status", status),
            *admin_routes(settings, tokens, searcher),
        ],
        lifespan=lifespan,
    )
    app.state.searcher = searcher
    app.state.settings = settings
    return app

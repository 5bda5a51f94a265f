"""The index over the Model Context Protocol, for agents (an editor's assistant, a coding CLI): ``nova mcp``.

Served with the official ``mcp`` SDK (``MCPServer``): over stdio for clients that launch it (``nova mcp``),
and over streamable HTTP at ``/mcp`` of ``nova serve`` (stateless, JSON responses; the same tokens as the
search routes, role ``viewer``). Tools, written for the agent that reads them:

* ``search``: the best places in the indexed tree for a query (hybrid: meaning and exact names);
* ``context``: the best places packed under a token budget, ready to paste into a prompt;
* ``status``: what the index holds and which store answers;
* ``callers`` and ``callees``: who calls a function, and what it calls (the code graph).

Every answer says which store answered (``store``: ``primary`` or ``backup``) and, from a backup, how stale
it is (``stale_as_of``), so an agent knows when results may miss recent edits (the failover document's
"tool responses don't indicate backup mode"). The searcher is the process's warm one
(:func:`~nova_pipeline.core.serving.search_api.shared_searcher`).
"""

from __future__ import annotations

import logging
from typing import Any

from nova_pipeline.core.errors import IndexNotBuiltError, InvalidRequestError, NovaError
from nova_pipeline.core.settings import Settings

__all__ = ["build_server", "http_endpoint"]

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "nova indexes one source tree (code and documents) for search. Use `search` to find where something "
    "is defined, raised, documented or handled: ask in words ('where are ignore rules applied') or with "
    "exact names ('JSONDecodeError', 'json/decoder.py'). Use `context` when you need the code itself in "
    "your prompt: it returns whole functions and sections, in file order, under a token budget. Every "
    "answer has `store`: when it is 'backup', the primary index is down and results may miss edits made "
    "after `stale_as_of`."
)


def build_server(settings: Settings, embedder=None, searcher=None):
    """The MCP server of the index at ``settings``. ``searcher``: the one to answer with (``nova serve``'s);
    default the process's warm one for ``settings`` and ``embedder`` (default the bundled model)."""
    from mcp.server.mcpserver import MCPServer

    from nova_pipeline.core.serving import search_api

    server = MCPServer(name="nova", instructions=INSTRUCTIONS, version="1")

    def _searcher():
        search_api._require_something_built(settings)
        return searcher if searcher is not None else search_api.shared_searcher(settings, embedder)

    def _fail(exc: NovaError) -> dict:
        kind = (
            "not_built"
            if isinstance(exc, IndexNotBuiltError)
            else "bad_request"
            if isinstance(exc, InvalidRequestError)
            else "unavailable"
        )
        return {"error": kind, "message": str(exc)}

    @server.tool(
        description=(
            "Search the indexed source tree. Returns up to k places (a function, a class head, a section of "
            "a document), best first, each with path, start_line and end_line (1-based), symbol, a short "
            "snippet, and why it matched (vector_score for meaning, lexical_score and matched_terms for "
            "words). mode: 'hybrid' (default, best for most queries), 'vector' (meaning only) or 'lexical' "
            "(exact words only). path: a glob over paths such as 'json/*' or '*.md'. language: 'python', "
            "'markdown', ... Check `store`: 'backup' means results may be stale (see stale_as_of)."
        )
    )
    def search(
        query: str, k: int = 5, mode: str = "hybrid", path: str | None = None, language: str | None = None
    ) -> dict[str, Any]:
        try:
            k = max(1, min(int(k), 50))
            result = _searcher().search(query, k, mode=mode, path=path, language=language)
        except NovaError as exc:
            return _fail(exc)
        return {
            "store": result.store,
            "stale_as_of": result.stale_as_of,
            "hits": [
                {
                    k2: v
                    for k2, v in search_api.hit_json(h).items()
                    if k2 not in ("chunk_id", "merged_chunks", "store", "stale_as_of")
                }
                for h in result.hits
            ],
        }

    @server.tool(
        description=(
            "Get the code and text most relevant to a question, ready for your prompt: whole places, packed "
            "by relevance under max_tokens (counted in the index's embedding tokenizer, roughly like other "
            "WordPiece tokenizers), then ordered by file and line, each under a header 'path:start-end "
            "symbol'. Use it instead of several searches when you need to read the code. Check `store` as "
            "for search."
        )
    )
    def context(question: str, max_tokens: int = 2000) -> dict[str, Any]:
        from nova_pipeline.core.serving.context import build_context

        try:
            ctx = build_context(_searcher(), question, max(1, min(int(max_tokens), 100_000)))
        except NovaError as exc:
            return _fail(exc)
        return {
            "store": ctx.store,
            "stale_as_of": ctx.stale_as_of,
            "tokens_used": ctx.tokens_used,
            "max_tokens": ctx.budget,
            "markdown": ctx.markdown(),
        }

    @server.tool(
        description=(
            "What the index holds: the tree's files and chunks, when it was last built, and which store "
            "answers searches now ('primary', or 'backup' while the primary is down, with how stale it is)."
        )
    )
    def status() -> dict[str, Any]:
        from nova_pipeline.core.keys import SOURCE_CHUNKS, SOURCE_FILES
        from nova_pipeline.core.protect import golden
        from nova_pipeline.core.serving.pointer import read_state
        from nova_pipeline.core.tables import read_table

        state = read_state(settings.home)
        files = read_table(settings.home, SOURCE_FILES, columns=["status"])
        chunks = read_table(settings.home, SOURCE_CHUNKS, columns=["chunk_id"])
        cur = golden.current_version(settings.home)
        return {
            "store": "backup" if state.failed_over else "primary",
            "stale_as_of": state.backup_created_at if state.failed_over else None,
            "files": 0 if files is None else int((files["status"] != "deleted").sum()),
            "chunks": 0 if chunks is None else len(chunks),
            "golden_version": cur.name if cur else None,
            "golden_created_at": cur.created_at if cur else None,
        }

    def _graph(kind: str, name: str) -> dict[str, Any]:
        from nova_pipeline.core.errors import TableNotMaterializedError
        from nova_pipeline.core.index import graph as code_graph

        try:
            qual, sites = code_graph.load(settings.home).query(kind, name)
        except InvalidRequestError as exc:
            return _fail(exc)
        except TableNotMaterializedError:
            return {"error": "not_built", "message": "no code graph yet: run the rebuild job"}
        return {"symbol": qual, "sites": sites[:200], "total": len(sites)}

    @server.tool(
        description=(
            "Who calls a function or method: every call site the code graph resolved to it, each with the "
            "calling symbol (source), path and line (1-based). name: a qualified name such as "
            "'json.decoder.JSONDecoder.raw_decode' or a unique ending such as 'JSONDecoder.raw_decode' (an "
            "ambiguous one is answered with the candidates). Use search first to find a name."
        )
    )
    def callers(name: str) -> dict[str, Any]:
        return _graph("callers", name)

    @server.tool(
        description=(
            "What a function or method calls: every call site in its body, each with the callee (target; '' "
            "when the graph could not resolve it, then target_text is what the code says), path and line "
            "(1-based). name: as for callers."
        )
    )
    def callees(name: str) -> dict[str, Any]:
        return _graph("callees", name)

    return server


def http_endpoint(settings: Settings, searcher, gate, hosts: list[str]):
    """The streamable-HTTP transport for ``nova serve``: returns ``(asgi_app, lifespan)``. Mount ``asgi_app``
    at ``/mcp``, and enter ``lifespan()`` (an async context manager: the SDK's session manager) in the
    service's own lifespan. Each request passes ``gate`` first (role ``viewer``, route ``mcp``), so MCP
    answers only whom ``/search`` answers. Stateless: no session to keep between requests, so it works
    behind several workers and across restarts. ``hosts``: the service's allowed Host names, also given to
    the SDK's DNS-rebinding check."""
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    server = build_server(settings, searcher=searcher)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*hosts, *(f"{h}:*" for h in hosts)],
        allowed_origins=[
            f"{scheme}://{h}{port}" for h in hosts for scheme in ("http", "https") for port in ("", ":*")
        ],
    )
    inner = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True, transport_security=security
    )

    class Gated:
        """The SDK's app behind the service's token gate."""

        async def __call__(self, scope, receive, send) -> None:
            caller = await gate.check(Request(scope, receive), "viewer", "mcp")
            if isinstance(caller, JSONResponse):
                await caller(scope, receive, send)
                return
            await inner(scope, receive, send)

    return Gated(), server.session_manager.run

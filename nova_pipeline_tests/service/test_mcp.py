"""nova mcp, driven by the MCP SDK's own client over stdio: the tools an agent sees, a search and a context
on the standard library's json package, and an answer marked as coming from the backup store while failed
over."""

import asyncio
import os
import sys

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from nova_pipeline.core.protect import golden
from nova_pipeline.core.serving.failover import FailoverSettings, activate_backup
from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline_tests.conftest import build_home
from nova_pipeline_tests.service.test_live import RandomUnderTheModelsName

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def call(home, steps):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "nova_pipeline.cli", "mcp"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))},
            "NOVA_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
        },
    )

    async def run():
        async with Client(params) as client:
            return await steps(client)

    return asyncio.run(run())


def write_graph(src, home) -> None:
    from nova_pipeline.core.index import graph
    from nova_pipeline.core.keys import SOURCE_FILES
    from nova_pipeline.core.tables import read_table, write_table

    tables = graph.build_graph(src, read_table(home, SOURCE_FILES), None, None)[:3]
    for name, table in zip(graph.TABLES, tables):
        write_table(home, name, table)


def structured(result) -> dict:
    assert not result.is_error, result
    return result.structured_content


def test_an_agent_lists_the_tools_searches_gets_context_and_sees_the_backup(json_tree, tmp_path):
    home = tmp_path / "home"
    embedder = RandomUnderTheModelsName()
    build_home(json_tree, home, embedder)
    write_graph(json_tree, home)
    golden.promote(home, embedder.fingerprint)

    async def steps(client):
        tools = await client.list_tools()
        callers = await client.call_tool("callers", {"name": "JSONDecoder.raw_decode"})
        unknown = await client.call_tool("callees", {"name": "no_such_name_here"})
        found = await client.call_tool("search", {"query": "JSONDecodeError", "k": 3})
        ctx = await client.call_tool(
            "context", {"question": "how is a JSON document decoded", "max_tokens": 400}
        )
        status = await client.call_tool("status", {})
        return tools, found, ctx, status, callers, unknown

    tools, found, ctx, status, callers, unknown = call(home, steps)
    assert structured(callers)["sites"][0]["source"] == "json.decoder.JSONDecoder.decode"
    assert structured(unknown)["error"] == "bad_request" and "no symbol" in structured(unknown)["message"]
    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == {"search", "context", "status", "callers", "callees"}
    assert (
        "store" in by_name["search"].description and "query" in by_name["search"].input_schema["properties"]
    )
    hits = structured(found)
    assert hits["store"] == "primary" and hits["stale_as_of"] is None
    assert hits["hits"][0]["symbol"].startswith("class JSONDecodeError")
    c = structured(ctx)
    assert 0 < c["tokens_used"] <= 400 and c["markdown"].startswith("### json/")
    s = structured(status)
    assert s["store"] == "primary" and s["chunks"] > 50 and s["golden_version"]

    activate_backup(home, FailoverSettings(), "test: primary down", "tester")
    cur = read_state(home)

    async def during_failover(client):
        return await client.call_tool("search", {"query": "JSONDecodeError", "k": 3})

    hits = structured(call(home, during_failover))
    assert hits["store"] == "backup" and hits["stale_as_of"] == cur.backup_created_at and hits["hits"]


def test_nova_serve_speaks_mcp_over_http_behind_the_same_tokens_and_hosts(json_tree, tmp_path):
    """The SDK's streamable-HTTP client against ``/mcp`` of the service: the same tools and answers; with
    tokens, a request without one is refused like ``/search``; a foreign Host is refused."""
    import httpx
    import httpx2

    from nova_pipeline.core.serving.tokens import TokenStore
    from nova_pipeline_tests.service.test_hostile import FP, serve

    home = tmp_path / "home"
    build_home(json_tree, home)
    golden.promote(home, FP)

    async def agent(url, headers=None):
        async with httpx2.AsyncClient(headers=headers or {}, timeout=30) as http:
            async with Client(streamable_http_transport(url, http)) as client:
                tools = await client.list_tools()
                found = await client.call_tool("search", {"query": "JSONDecodeError", "k": 3})
                return {t.name for t in tools.tools}, structured(found)

    with serve(home) as s:
        names, hits = asyncio.run(agent(f"{s.url}/mcp"))
        assert names == {"search", "context", "status", "callers", "callees"}
        assert hits["store"] == "primary" and hits["hits"][0]["path"] == "json/decoder.py"
        direct = httpx.get(f"{s.url}/search", params={"q": "JSONDecodeError", "k": 3}).json()["hits"]
        assert [h["symbol"] for h in hits["hits"]] == [h["symbol"] for h in direct]
        foreign = httpx.post(f"{s.url}/mcp", json={}, headers={"Host": "attacker.example"})
        assert foreign.status_code == 400

    token = TokenStore(home).create("agent", "viewer")
    with serve(home) as s:
        refused = httpx.post(
            f"{s.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert refused.status_code == 401 and "Traceback" not in refused.text
        names, hits = asyncio.run(agent(f"{s.url}/mcp", {"Authorization": f"Bearer {token}"}))
        assert names == {"search", "context", "status", "callers", "callees"} and hits["hits"]


def streamable_http_transport(url, http):
    from mcp.client.streamable_http import streamable_http_client

    return streamable_http_client(url, http_client=http)

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


def structured(result) -> dict:
    assert not result.is_error, result
    return result.structured_content


def test_an_agent_lists_the_tools_searches_gets_context_and_sees_the_backup(json_tree, tmp_path):
    home = tmp_path / "home"
    embedder = RandomUnderTheModelsName()
    build_home(json_tree, home, embedder)
    golden.promote(home, embedder.fingerprint)

    async def steps(client):
        tools = await client.list_tools()
        found = await client.call_tool("search", {"query": "JSONDecodeError", "k": 3})
        ctx = await client.call_tool(
            "context", {"question": "how is a JSON document decoded", "max_tokens": 400}
        )
        status = await client.call_tool("status", {})
        return tools, found, ctx, status

    tools, found, ctx, status = call(home, steps)
    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == {"search", "context", "status"}
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

"""``client: codex`` on every call, span, stat and viewer row; ``stats --by client``."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp

from opik_cipx.config import Settings
from opik_cipx.model import CallKind, Exchange, client_of
from opik_cipx.report import stats
from opik_cipx.server import Gateway
from opik_cipx.ship.facts import analyze as call_facts
from opik_cipx.ship.span import llm_span
from opik_cipx.viewer.queries import list_calls
from tests.support.exchanges import context
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_responses import Answer, FakeResponses
from tests.support.gateway import captured, post_raw, request_body

SESSION = "01a24efc-ead0-7910-9bcd-b9eba3b00019"


def test_client_of() -> None:
    assert client_of(CallKind.RESPONSES, "/v1/responses", {}) == "codex"
    assert client_of(CallKind.OTHER, "/v1/models", {"originator": "codex_exec"}) == "codex"
    assert client_of(CallKind.OTHER, "/backend-api/codex/models", {}) == "codex"
    assert client_of(CallKind.MESSAGES, "/v1/messages", {"x-api-key": "[redacted]"}) == "claude-code"


async def test_both_clients_through_one_gateway(make_settings: Callable[..., Settings]) -> None:
    async with FakeAnthropic() as anthropic, FakeResponses([Answer(input_tokens=3000, cached_tokens=2000,
                                                                   output_tokens=20)]) as openai:
        gw = Gateway(make_settings(upstream_url=anthropic.url, openai_upstream_url=openai.url, capture_worker=False))
        async with gw:
            status, _, _ = await post_raw(gw.url, request_body())
            assert status == 200
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"{gw.url}/v1/responses", headers={"session-id": SESSION}) as ws:
                    await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-5.1-codex",
                                                  "input": [{"type": "message", "role": "user",
                                                             "content": [{"type": "input_text", "text": "hi"}]}]}))
                    while json.loads((await ws.receive()).data)["type"] != "response.completed":
                        pass
            rows: list[Exchange] = await captured(gw, 2)
            assert gw.spool is not None
            listing = await gw.spool.run(lambda sp: list_calls(sp.conn))
            rep = await gw.spool.run(lambda sp: stats.report(sp.conn, stats.window(), "client"))
    codex = next(e for e in rows if e.kind is CallKind.RESPONSES)
    claude = next(e for e in rows if e.kind is CallKind.MESSAGES)
    assert (codex.client, claude.client) == ("codex", "claude-code")
    assert codex.session_id == SESSION
    assert {r["client"] for r in listing["calls"]} == {"codex", "claude-code"}
    by = {g.key: g for g in rep.groups}
    assert set(by) == {"codex", "claude-code"} and rep.totals.calls == 2
    assert by["codex"].cache_read_tokens == 2000 and by["codex"].input_tokens == 1000
    span = llm_span(call_facts(codex, None), context(SESSION), updated_at="2026-12-07T00:00:00Z")
    assert span["tags"][0] == "codex" and span["metadata"]["cc"]["client"] == "codex"
    assert span["provider"] == "openai" and span["name"] == "codex"
    assert span["input"]["messages"][0]["content"][0]["text"] == "hi"

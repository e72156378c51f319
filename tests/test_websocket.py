"""Codex's Responses calls through the gateway: WebSocket tunnel and HTTP+SSE, relayed and captured."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from opik_cipx.config import Settings
from opik_cipx.model import CallKind, Outcome
from opik_cipx.server import Gateway
from tests.support.fake_responses import Answer, FakeResponses
from tests.support.gateway import captured

SESSION = "01a24efc-ead0-7910-9bcd-b9eba3b00019"
HEADERS = {"session-id": SESSION, "originator": "codex_exec", "openai-beta": "responses_websockets=2026-02-06",
           "Authorization": "Bearer sk-test"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeResponses]:
    async with FakeResponses([Answer(text="first answer", input_tokens=5000, cached_tokens=4096,
                                     output_tokens=30, reasoning_tokens=10),
                              Answer(custom=("exec", "text(1)"), input_tokens=5100, cached_tokens=5000)]) as f:
        yield f


@pytest.fixture
async def codex_gateway(fake: FakeResponses, make_settings: Callable[..., Settings]) -> AsyncIterator[Gateway]:
    gw = Gateway(make_settings(upstream_url="http://127.0.0.1:9", openai_upstream_url=fake.url,
                               shutdown_grace=2.0, capture_worker=False))
    async with gw:
        yield gw


async def _turn(ws: aiohttp.ClientWebSocketResponse, body: dict[str, Any]) -> list[dict[str, Any]]:
    await ws.send_str(json.dumps(body))
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != "response.completed":
        events.append(json.loads((await ws.receive()).data))
    return events


@pytest.mark.parametrize("compress", [15, 0], ids=["deflate", "plain"])
async def test_websocket_turns_relay_unmodified_and_are_captured(
    codex_gateway: Gateway, fake: FakeResponses, compress: int
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{codex_gateway.url}/v1/responses", headers=HEADERS, compress=compress) as ws:
            assert ws.compress == compress  # negotiated end to end, with the fake
            warm = await _turn(ws, {"type": "response.create", "model": "gpt-5.1-codex", "generate": False,
                                    "input": []})
            turn = await _turn(ws, {"type": "response.create", "model": "gpt-5.1-codex",
                                    "previous_response_id": warm[-1]["response"]["id"],
                                    "input": [{"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": "hi"}]}]})
    # What the client got is what the fake sent, event for event.
    assert [warm, turn] == [r.sent for r in fake.requests]
    assert fake.requests[1].headers[0][0] == "Host"
    assert dict(fake.requests[1].headers)["session-id"] == SESSION
    rows = sorted(await captured(codex_gateway, 2), key=lambda e: e.started_at)
    assert [(e.kind, e.method, e.outcome) for e in rows] == [(CallKind.RESPONSES, "WEBSOCKET", Outcome.COMPLETE)] * 2
    warm_ex, turn_ex = rows
    assert warm_ex.usage is None and warm_ex.cost is None  # a warm-up: recorded, not billed
    assert turn_ex.usage is not None
    u = turn_ex.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.output_tokens, u.reasoning_tokens) == (904, 4096, 30, 10)
    assert turn_ex.session_id == SESSION and turn_ex.model == "gpt-5.1-codex"
    assert turn_ex.request_body == fake.requests[1].body
    assert turn_ex.cost is not None and turn_ex.cost.total_usd == pytest.approx(
        (904 * 1.25 + 4096 * 0.125 + 30 * 10) / 1e6)


async def test_http_responses_go_to_the_openai_upstream(codex_gateway: Gateway, fake: FakeResponses) -> None:
    body = json.dumps({"model": "gpt-5.1-codex", "stream": True, "input": []}).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{codex_gateway.url}/v1/responses", data=body,
                             headers={**HEADERS, "Content-Type": "application/json"}) as r:
            assert r.status == 200
            wire = await r.read()
        async with http.get(f"{codex_gateway.url}/v1/models", headers=HEADERS) as r:
            assert r.status == 200  # another OpenAI path: relayed to the same upstream
    assert [r.transport for r in fake.requests] == ["http", "http"]
    assert b"response.completed" in wire
    rows = sorted(await captured(codex_gateway, 2), key=lambda e: e.started_at)
    call, models = rows
    assert call.kind is CallKind.RESPONSES and call.outcome is Outcome.COMPLETE and call.streamed
    assert call.usage is not None and call.usage.cache_read_input_tokens == 4096
    assert models.kind is CallKind.OTHER and models.path == "/v1/models"


async def test_refused_upgrade_is_relayed_as_is(make_settings: Callable[..., Settings]) -> None:
    async with FakeResponses(websocket=False) as off:
        gw = Gateway(make_settings(upstream_url="http://127.0.0.1:9", openai_upstream_url=off.url,
                                   capture_worker=False))
        async with gw, aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(f"{gw.url}/v1/responses", headers=HEADERS)
            assert err.value.status == 426  # Codex falls back to HTTP at once on 426
            rows = await captured(gw, 1)
    assert rows[0].status == 426 and rows[0].outcome is Outcome.HTTP_ERROR


async def test_a_chained_turn_is_attributed_alike_at_capture_and_on_reanalysis(
    codex_gateway: Gateway, fake: FakeResponses
) -> None:
    from opik_cipx.store import attribution as attribution_store

    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{codex_gateway.url}/v1/responses", headers=HEADERS, compress=15) as ws:
            first = await _turn(ws, {"type": "response.create", "model": "gpt-5.1-codex",
                                     "input": [{"type": "message", "role": "developer",
                                                "content": [{"type": "input_text", "text": "You are Codex. " * 200}]},
                                               {"type": "message", "role": "user",
                                                "content": [{"type": "input_text", "text": "hi"}]}]})
            call = await _turn(ws, {"type": "response.create", "model": "gpt-5.1-codex",
                                    "previous_response_id": first[-1]["response"]["id"], "input": []})
            call_id = call[-1]["response"]["output"][0]["call_id"]
            await _turn(ws, {"type": "response.create", "model": "gpt-5.1-codex",
                             "previous_response_id": call[-1]["response"]["id"],
                             "input": [{"type": "custom_tool_call_output", "call_id": call_id, "output": "1"}]})
    rows = sorted(await captured(codex_gateway, 3), key=lambda e: e.started_at)
    last = rows[-1]
    assert codex_gateway.spool is not None
    stored = await codex_gateway.spool.run(lambda sp: attribution_store.load(sp.conn, last.id))
    again = await codex_gateway.spool.run(lambda sp: attribution_store.reanalyze(sp.conn, last, codex_gateway.prices))
    assert stored is not None
    at_capture = {(t["category"], t["item"]): t["tokens"] for t in stored["items"]}
    assert at_capture[("tool_io", "exec")] > 0 and ("tool_io", "(unknown)") not in at_capture
    assert at_capture[("system", "base instructions")] > 0  # the first turn's context, inherited
    assert {(t.category, t.item): t.tokens for t in again.items} == at_capture


async def test_a_capture_bug_never_breaks_the_tunnel(
    codex_gateway: Gateway, fake: FakeResponses, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from opik_cipx.wire.websocket import MessageReader

    def broken(self: MessageReader, data: bytes) -> list[Any]:
        raise RuntimeError("a capture bug")

    monkeypatch.setattr(MessageReader, "feed", broken)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{codex_gateway.url}/v1/responses", headers=HEADERS, compress=15) as ws:
            for _ in range(2):  # the tunnel goes on relaying after capture gave up
                events = await _turn(ws, {"type": "response.create", "model": "gpt-5.1-codex", "input": []})
                assert events[-1]["type"] == "response.completed"
    assert [r.sent for r in fake.requests][-1] == events
    assert "relaying without it" in caplog.text


async def test_an_unreachable_openai_upstream_answers_the_upgrade_502(make_settings: Callable[..., Settings]) -> None:
    from tests.support.gateway import free_port

    gw = Gateway(make_settings(upstream_url="http://127.0.0.1:9",
                               openai_upstream_url=f"http://127.0.0.1:{free_port()}", capture_worker=False))
    async with gw, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{gw.url}/v1/responses", headers=HEADERS)
        assert err.value.status == 502
        rows = await captured(gw, 1)
    assert rows[0].outcome is Outcome.UNREACHABLE and rows[0].path == "/v1/responses"

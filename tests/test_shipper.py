"""The gateway's span stage and shipper against the Opik contract server, in-process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from opik_cipx.config import Settings
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic, Turn
from tests.support.opik_server import OpikContractServer

SID = "5b0c8f0e-1111-4222-8333-944445555666"
MODEL = "claude-sonnet-4-5-20250929"


def body(messages: list[dict[str, Any]], session: str = SID) -> bytes:
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "acct-1", "session_id": session})
    return json.dumps({"model": MODEL, "max_tokens": 256, "stream": False, "metadata": {"user_id": user_id},
                       "system": [{"type": "text", "text": "You are terse."}],
                       "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
                       "messages": messages}).encode()


async def call(gw: Gateway, payload: bytes, *, session: str = SID, path: str = "/v1/messages", agent: str | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json", "x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01",
               "X-Claude-Code-Session-Id": session}
    if agent:
        headers["x-claude-code-agent-id"] = agent
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, data=payload, headers=headers) as r:
        return await r.json(content_type=None)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def opik() -> AsyncIterator[OpikContractServer]:
    async with OpikContractServer(api_key="OPIK-KEY-0123456789", workspace="team") as server:
        yield server


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPIK_CC_TRACING_ENABLED", "true")


@pytest.fixture
async def gateway_factory(
    upstream: FakeAnthropic, opik: OpikContractServer, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def make(**overrides: Any) -> Gateway:
        values: dict[str, Any] = {"upstream_url": upstream.url, "opik_base_url": opik.url, "shutdown_grace": 2.0,
                                  "opik_api_key": "OPIK-KEY-0123456789", "opik_workspace": "team"}
        values.update(overrides)
        gw = Gateway(make_settings(**values))
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()


async def two_turns(gw: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="checking", tool_uses=[("Bash", {"command": "ls"})]), Turn(text="all done")]
    first = await call(gw, body([{"role": "user", "content": "list files please"}]))
    tool_use = next(b for b in first["content"] if b["type"] == "tool_use")
    await call(gw, body([
        {"role": "user", "content": "list files please"},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "a.txt b.txt"}]},
    ]))


async def test_a_session_arrives_as_one_trace_with_llm_and_tool_spans(
    enabled: None, gateway_factory: Any, upstream: FakeAnthropic, opik: OpikContractServer
) -> None:
    gw = await gateway_factory()
    await two_turns(gw, upstream)
    await until(lambda: len(opik.spans) == 3 and gw.shipper.status()["queue_depth"] == 0)
    assert opik.invalid == []
    (trace,) = opik.traces.values()
    assert trace["thread_id"] == SID and trace["input"] == {"prompt": "list files please"}
    llm = sorted((s for s in opik.spans.values() if s["type"] == "llm"), key=lambda s: s["start_time"])
    (tool,) = [s for s in opik.spans.values() if s["type"] == "tool"]
    assert [s["trace_id"] for s in llm] == [trace["id"]] * 2 and tool["parent_span_id"] == llm[0]["id"]
    assert tool["output"] == {"content": "a.txt b.txt"} and tool["input"] == {"command": "ls"}
    assert llm[0]["usage"]["prompt_tokens"] > 0 and llm[0]["total_estimated_cost"] > 0
    status = gw.shipper.status()
    assert status["destination"] == {"base_url": opik.url, "workspace": "team", "project": "claude-code",
                                     "api_key_masked": "OP…6789"}
    assert status["shipped"] >= 4 and status["last_shipped"]["at"] and status["last_error"] is None
    assert status["enabled_default"] is True and status["telemetry"] == "off"


async def test_count_tokens_and_other_calls_are_not_spans(enabled: None, gateway_factory: Any, opik: OpikContractServer) -> None:
    gw = await gateway_factory()
    await call(gw, body([{"role": "user", "content": "hi"}]), path="/v1/messages/count_tokens")
    await call(gw, body([{"role": "user", "content": "hi"}]))
    await until(lambda: len(opik.spans) == 1)
    await gw.capture.drain(5)
    assert len(opik.spans) == 1


async def test_disabled_session_is_proxied_and_stored_but_not_shipped(gateway_factory: Any, opik: OpikContractServer) -> None:
    gw = await gateway_factory()
    reply = await call(gw, body([{"role": "user", "content": "hi"}]))
    assert reply["content"]
    await gw.capture.drain(5)
    await gw.shipper.refresh()
    assert len(await gw.spool.calls()) == 1
    status = gw.shipper.status()
    assert status["enabled_default"] is False and status["not_shipped"]["disabled"] == 1
    assert opik.spans == {} and status["queue_depth"] == 0


async def test_without_a_destination_everything_stays_local(enabled: None, gateway_factory: Any, opik: OpikContractServer) -> None:
    gw = await gateway_factory(opik_base_url=None, opik_api_key=None)
    await call(gw, body([{"role": "user", "content": "hi"}]))
    await gw.capture.drain(5)
    status = gw.shipper.status()
    assert status["destination"] is None and status["state"] == "local spool only"
    assert len(await gw.spool.calls()) == 1 and opik.requests == []


async def test_sample_rate_zero_ships_nothing_but_counts(enabled: None, gateway_factory: Any, opik: OpikContractServer) -> None:
    gw = await gateway_factory(sample_rate=0.0)
    await call(gw, body([{"role": "user", "content": "hi"}]))
    await gw.capture.drain(5)
    await gw.shipper.refresh()
    assert gw.shipper.status()["not_shipped"]["sampled_out"] == 1 and opik.spans == {}


@pytest.mark.slow
async def test_rate_limit_reset_is_honoured_then_everything_ships(enabled: None, gateway_factory: Any, opik: OpikContractServer) -> None:
    opik.fail(429, headers={"RateLimit-Reset": "1"})
    gw = await gateway_factory()
    await call(gw, body([{"role": "user", "content": "hi"}]))
    await until(lambda: len(opik.spans) == 1)
    first_try, second_try = opik.requests[0], opik.requests[1]
    assert first_try["status"] == 429
    assert gw.shipper.status()["last_error"]["message"].startswith("HTTP 429")
    assert second_try["t"] - first_try["t"] >= 0.9  # waited for the reset, not the 0.25 s backoff


@pytest.mark.slow
async def test_server_errors_back_off_and_recover(enabled: None, gateway_factory: Any, opik: OpikContractServer) -> None:
    opik.fail(503, times=3)
    gw = await gateway_factory()
    await call(gw, body([{"role": "user", "content": "hi"}]))
    await until(lambda: len(opik.spans) == 1)
    assert opik.batch_statuses[:3] == [503, 503, 503]
    assert gw.shipper.status()["state"] == "shipping"


@pytest.mark.slow
async def test_a_refused_record_is_set_aside_and_the_rest_of_its_batch_ships(
    enabled: None, gateway_factory: Any, upstream: FakeAnthropic, opik: OpikContractServer
) -> None:
    await opik.down()  # let several records queue up into one batch
    gw = await gateway_factory()
    for i in range(4):
        await call(gw, body([{"role": "user", "content": f"q{i}"}], session=f"s-{i}"), session=f"s-{i}")
    await gw.capture.drain(5)
    ids = await gw.spool.run(lambda s: [r[0] for r in s.conn.execute("SELECT id FROM outbox WHERE kind='span' ORDER BY seq")])
    opik.refuse_ids = {ids[1]}
    await opik.up()
    await until(lambda: gw.shipper.status()["queue_depth"] == 0, timeout=20)
    assert set(opik.spans) == set(ids) - {ids[1]} and len(opik.traces) == 4
    status = gw.shipper.status()
    assert status["rejected"] == 1 and "refused id" in status["last_rejection"]["reason"]


async def test_session_environment_enables_and_places_spans_under_a_parent_trace(
    gateway_factory: Any, opik: OpikContractServer, tmp_path: Any
) -> None:
    parent, root = "0190f0a0-0000-7000-8000-0000000000aa", "0190f0a0-0000-7000-8000-0000000000bb"
    from opik_cipx.store.sessions import SessionInfo

    gw = await gateway_factory()
    # As the SessionStart hook registers it (stored, so the capture worker sees it too).
    await gw.sessions.register(SessionInfo(SID, cwd=str(tmp_path), git_branch="feature", env={
        "OPIK_CC_TRACING_ENABLED": "true", "OPIK_CC_PARENT_TRACE_ID": parent, "OPIK_CC_ROOT_SPAN_ID": root,
        "OPIK_CC_PROJECT": "team-{user_uuid}"}))
    await call(gw, body([{"role": "user", "content": "hi"}]))
    await until(lambda: len(opik.spans) == 1)
    (span,) = opik.spans.values()
    assert span["trace_id"] == parent and span["parent_span_id"] == root
    assert span["project_name"] == "team-acct-1"  # no ~/.claude.json: the request's account uuid
    assert opik.traces == {}  # the parent trace is someone else's


@pytest.mark.slow
async def test_calls_stored_but_never_derived_are_recovered_at_start(
    enabled: None, gateway_factory: Any, opik: OpikContractServer
) -> None:
    from tests.support.exchanges import make_exchange

    gw = await gateway_factory(opik_base_url=None, opik_api_key=None)
    ex = make_exchange("opus", "prompt", ex_id="left-behind", started_at=time.time() - 60)
    await gw.spool.add(ex)  # as if killed between storing and deriving
    await gw.stop()
    gw2 = await gateway_factory()
    await until(lambda: len(opik.spans) == 1)
    (span,) = opik.spans.values()
    assert span["metadata"]["cc"]["exchange_id"] == "left-behind"
    assert gw2.shipper.status()["queue_depth"] == 0

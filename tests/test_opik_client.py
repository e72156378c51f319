from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from opik_cipx.ship.opik_client import (
    OpikClient,
    Verdict,
    classify,
    mask_key,
    retry_after,
)
from opik_cipx.ship.uuid7 import uuid7_at
from tests.support.opik_server import OpikContractServer


def span(i: int = 0, **extra: object) -> bytes:
    record = {"id": uuid7_at(1_780_000_000 + i, f"s{i}"), "trace_id": uuid7_at(1_780_000_000, "t"),
              "name": "claude", "type": "llm", "start_time": "2026-05-28T20:26:40.000Z",
              "last_updated_at": "2026-05-28T20:26:41.000Z", "usage": {"prompt_tokens": 3}, **extra}
    return json.dumps(record).encode()


@pytest.fixture
async def opik() -> AsyncIterator[OpikContractServer]:
    async with OpikContractServer(api_key="KEY-123456789", workspace="ws") as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_batch_is_posted_with_auth_and_workspace_headers(opik: OpikContractServer, session: aiohttp.ClientSession) -> None:
    client = OpikClient(session, opik.url, api_key="KEY-123456789", workspace="ws")
    result = await client.send_batch("span", [span(0), span(1)])
    assert (result.verdict, result.status) == (Verdict.OK, 204)
    assert len(opik.spans) == 2
    headers = opik.requests[-1]["headers"]
    assert headers["Authorization"] == "KEY-123456789" and headers["Comet-Workspace"] == "ws"
    trace = json.dumps({"id": uuid7_at(1_780_000_000, "t"), "start_time": "2026-05-28T20:26:40.000Z", "thread_id": "s"}).encode()
    assert (await client.send_batch("trace", [trace])).verdict is Verdict.OK and len(opik.traces) == 1


async def test_wrong_key_blocks_and_bad_record_is_rejected(opik: OpikContractServer, session: aiohttp.ClientSession) -> None:
    blocked = await OpikClient(session, opik.url, api_key="nope", workspace="ws").send_batch("span", [span()])
    assert (blocked.verdict, blocked.status) == (Verdict.BLOCKED, 401)
    client = OpikClient(session, opik.url, api_key="KEY-123456789", workspace="ws")
    bad = json.dumps({"id": str(uuid.uuid4()), "start_time": "2026-05-28T20:26:40.000Z"}).encode()
    rejected = await client.send_batch("span", [bad])
    assert (rejected.verdict, rejected.status) == (Verdict.REJECT, 400) and "version 7" in rejected.message
    invalid_type = await client.send_batch("span", [span(type="banana")])
    assert invalid_type.verdict is Verdict.REJECT and "schema" in invalid_type.message


async def test_rate_limit_carries_the_reset_delay(opik: OpikContractServer, session: aiohttp.ClientSession) -> None:
    opik.fail(429, headers={"RateLimit-Reset": "3"})
    result = await OpikClient(session, opik.url, api_key="KEY-123456789", workspace="ws").send_batch("span", [span()])
    assert (result.verdict, result.status, result.retry_after) == (Verdict.RETRY, 429, 3.0)
    opik.fail(503)
    result = await OpikClient(session, opik.url, api_key="KEY-123456789", workspace="ws").send_batch("span", [span()])
    assert (result.verdict, result.retry_after) == (Verdict.RETRY, None)


@pytest.mark.slow
async def test_connection_refused_and_stall_are_retryable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = await OpikClient(session, f"http://127.0.0.1:{port}/api").send_batch("span", [span()])
    assert refused.verdict is Verdict.RETRY and refused.status is None
    async with OpikContractServer() as slow:
        slow.stall = 2.0
        stalled = await OpikClient(session, slow.url, timeout=0.3).send_batch("span", [span()])
        assert stalled.verdict is Verdict.RETRY and stalled.status is None


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, Verdict.OK), (204, Verdict.OK), (400, Verdict.REJECT), (409, Verdict.REJECT), (413, Verdict.REJECT),
     (422, Verdict.REJECT), (401, Verdict.BLOCKED), (402, Verdict.BLOCKED), (403, Verdict.BLOCKED),
     (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY)],
)
def test_status_classification(status: int, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_retry_after_reads_seconds_epochs_and_retry_after() -> None:
    assert retry_after({"RateLimit-Reset": "2.5"}) == 2.5
    assert retry_after({"RateLimit-Reset": "1700000010"}, now=1_700_000_000) == 10
    assert retry_after({"Retry-After": "4"}) == 4
    assert retry_after({"RateLimit-Reset": "soon"}) is None and retry_after({}) is None


def test_api_key_is_masked() -> None:
    assert mask_key("abcdefghijklmnop") == "ab…mnop"
    assert mask_key("short") == "****" and mask_key(None) is None

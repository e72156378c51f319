"""Clients that misbehave on a loaded gateway: dropping streams at random points, pipelining,
waiting on a slow head. Each call is still stored with the outcome it had, the upstream side
is released, and the calls after them flow as before."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from opik_cipx.model import Outcome
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic, Turn
from tests.support.gateway import API_KEY, captured, request_body

pytestmark = pytest.mark.slow


async def test_clients_dropping_streams_mid_way_are_stored_as_gone_and_the_rest_flow(
    gateway: Gateway, upstream: FakeAnthropic
) -> None:
    rng = random.Random(17)
    drops = 12
    upstream.script = [Turn(text=" ".join(["word"] * 12), event_delay=0.03) for _ in range(drops)] + [
        Turn(text="after") for _ in range(20)]

    async def drop(after_events: int) -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(gateway.url + "/v1/messages", data=request_body(),
                              headers={"x-api-key": API_KEY}) as r:
                for _ in range(after_events):
                    await r.content.readuntil(b"\n\n")
                r.close()  # gone mid-stream, without reading the rest

    await asyncio.gather(*(drop(rng.randint(1, 6)) for _ in range(drops)))
    gone = await captured(gateway, drops, timeout=30)
    assert all(ex.outcome is Outcome.CLIENT_GONE for ex in gone), [(ex.outcome, ex.error) for ex in gone]
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.post(gateway.url + "/v1/messages", data=request_body(),
                              headers={"x-api-key": API_KEY}) as r:
                assert r.status == 200 and b"message_stop" in await r.read()
    after = await captured(gateway, 20, timeout=30)
    assert all(ex.outcome is Outcome.COMPLETE for ex in after)
    print(f"client drops: {drops} stored as client_gone, then 20/20 calls complete")


async def test_pipelined_requests_mixing_streamed_and_plain_are_answered_in_order(
    gateway: Gateway, upstream: FakeAnthropic
) -> None:
    n = 6
    upstream.script = [Turn(text=f"answer {i}") for i in range(n)]
    host, port = "127.0.0.1", gateway.port
    reader, writer = await asyncio.open_connection(host, port)
    heads = b""
    for i in range(n):
        body = request_body(stream=i % 2 == 0)
        heads += (b"POST /v1/messages HTTP/1.1\r\nHost: %s:%d\r\nx-api-key: %s\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (host.encode(), port, API_KEY.encode(), len(body), body))
    writer.write(heads)  # every request at once, before reading any answer
    await writer.drain()
    answers = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head
        if b"chunked" in head.lower():
            data = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data += await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(b":")[1])
            data = await reader.readexactly(length)
        answers.append(data)
    writer.close()
    await writer.wait_closed()
    assert [f"answer {i}".encode() in a for i, a in enumerate(answers)] == [True] * n
    stored = await captured(gateway, n, timeout=30)
    assert all(ex.outcome is Outcome.COMPLETE for ex in stored)


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
async def test_a_slow_head_within_the_bound_is_waited_for_and_timed(
    gateway: Gateway, upstream: FakeAnthropic, delay: float
) -> None:
    upstream.script = [Turn(text="late", first_byte_delay=delay)]
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            assert r.status == 200 and b"message_stop" in await r.read()
    (ex,) = await captured(gateway)
    assert ex.outcome is Outcome.COMPLETE and ex.ttfb_ms is not None and ex.ttfb_ms >= delay * 1000 * 0.95

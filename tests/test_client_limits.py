"""Client-side bounds: stalled or idle client connections end; a slowloris cannot crowd out real calls."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest

from opik_cipx.model import Outcome
from opik_cipx.proxy.client_limits import ClientLimits, Phase, overdue, to_evict
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.gateway import API_KEY, captured, post_bytes, request_body

LIMITS = ClientLimits(head_timeout=30, body_timeout=60, idle_timeout=600)


def test_each_phase_has_its_own_bound_and_a_call_in_progress_has_none() -> None:
    assert overdue(Phase.HEAD, 0.0, 30.0, LIMITS) is None
    assert overdue(Phase.HEAD, 0.0, 30.5, LIMITS) == "request head not complete within 30s"
    assert overdue(Phase.BODY, 0.0, 59.0, LIMITS) is None
    assert "no request body bytes" in (overdue(Phase.BODY, 0.0, 61.0, LIMITS) or "")
    # Claude Code keeps connections between calls: idle is allowed far longer than a slow head.
    assert overdue(Phase.IDLE, 0.0, 300.0, LIMITS) is None
    assert overdue(Phase.IDLE, 0.0, 601.0, LIMITS) == "idle for more than 600s"
    assert overdue(Phase.BUSY, 0.0, 1e9, LIMITS) is None


def test_at_the_cap_the_longest_waiting_connection_without_a_call_makes_room() -> None:
    def pick(*candidates: tuple[Phase, float]) -> int | None:
        return to_evict(list(candidates), 10.0, LIMITS)

    assert pick((Phase.BUSY, 1.0), (Phase.IDLE, 5.0), (Phase.HEAD, 3.0), (Phase.BODY, 0.0)) == 2
    # A slow head goes before an idle connection, however long that one has waited.
    assert pick((Phase.IDLE, 1.0), (Phase.HEAD, 3.0), (Phase.HEAD, 2.0)) == 2
    assert pick((Phase.IDLE, 1.0), (Phase.ENDING, 9.0)) == 1
    assert pick((Phase.IDLE, 4.0), (Phase.NEW, 1.0)) == 1
    # Just connected, its request on the way: not pushed out by the next newcomer.
    assert pick((Phase.NEW, 9.9), (Phase.BUSY, 0.0)) is None
    assert pick((Phase.BUSY, 1.0), (Phase.BODY, 0.0)) is None  # all serving: refuse the new one
    assert pick() is None


def _tight(gw: Gateway, **kw: float) -> None:
    assert gw.relay is not None
    values: dict[str, float] = {"head_timeout": 1.0, "body_timeout": 1.0, "idle_timeout": 1.0,
                                "max_connections": 16, "sweep_every": 0.1}
    values.update(kw)
    gw.relay.limits = ClientLimits(**values)  # type: ignore[arg-type]


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the gateway sends until it closes the connection, which must be within ``seconds``."""
    async with asyncio.timeout(seconds):
        return await reader.read(-1)


async def test_a_connection_that_never_sends_is_closed_after_the_idle_bound(gateway: Gateway) -> None:
    _tight(gateway, idle_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    t0 = time.monotonic()
    assert await _closed_within(reader, 3.0) == b""
    assert 0.4 < time.monotonic() - t0 < 3.0
    writer.close()


async def test_a_kept_alive_connection_survives_well_within_the_idle_bound(gateway: Gateway) -> None:
    _tight(gateway, idle_timeout=2.0)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
                assert r.status == 200
                await r.read()
            await asyncio.sleep(0.6)  # longer than the sweep, shorter than the bound
        assert gateway.relay is not None and gateway.relay.expired == 0


async def test_a_request_head_sent_too_slowly_is_answered_408(gateway: Gateway, upstream: FakeAnthropic) -> None:
    _tight(gateway, head_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
    out = await _closed_within(reader, 3.0)
    assert out.startswith(b"HTTP/1.1 408 ") and b"request head not complete" in out and not upstream.requests
    writer.close()


async def test_a_body_that_stops_arriving_ends_the_call_as_the_clients_doing(gateway: Gateway) -> None:
    _tight(gateway, body_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nContent-Length: 100\r\n\r\n{\"mo")
    await _closed_within(reader, 3.0)
    writer.close()
    (ex,) = await captured(gateway)
    assert ex.outcome is Outcome.CLIENT_GONE and "client stalled" in (ex.error or "")


@pytest.mark.slow  # a subprocess or a flood of connections, several seconds
async def test_a_slowloris_cannot_exhaust_the_gateway_and_real_calls_keep_flowing(
    gateway: Gateway, upstream: FakeAnthropic
) -> None:
    _tight(gateway, head_timeout=1.0, max_connections=16)
    relay = gateway.relay
    assert relay is not None
    stop = asyncio.Event()
    cut = 0  # attacker connections the gateway ended (408 or closed)
    peak = 0

    async def attacker() -> None:
        """Keeps one connection sending a request head a header line at a time, forever; when the
        gateway cuts it, opens another a moment later (as slowloris tools do, at a rate)."""
        nonlocal cut
        while not stop.is_set():
            await asyncio.sleep(0.1)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
                i = 0
                while not stop.is_set() and not reader.at_eof():
                    writer.write(b"x-slow-%d: y\r\n" % i)
                    i += 1
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await reader.read(65536)
                if reader.at_eof():
                    cut += 1
            except OSError:
                cut += 1
            finally:
                writer.close()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(relay.connections))
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(attacker()) for _ in range(40)] + [asyncio.create_task(watch())]
    await asyncio.sleep(0.5)  # the attack is under way before the first real call
    latencies = []
    try:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(20):
                t0 = time.monotonic()
                async with s.post(gateway.url + "/v1/messages", data=request_body(),
                                  headers={"x-api-key": API_KEY}) as r:
                    assert r.status == 200
                    await r.read()
                latencies.append(time.monotonic() - t0)
        await asyncio.sleep(1.5)  # long enough for every stalled head to hit its bound
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(latencies) == 20 and max(latencies) < 5.0
    assert peak <= 16, f"{peak} client connections open at once, over the cap of 16"
    print(f"slowloris: {cut} attacker connections cut, peak {peak}, slowest real call {max(latencies):.3f}s")
    assert cut >= 40 and relay.expired >= 40
    assert len(upstream.messages_requests()) == 20  # no half-sent head ever reached the upstream


async def test_half_closing_after_a_complete_request_still_gets_the_answer(gateway: Gateway) -> None:
    for requests in (1, 2):  # one request, and two pipelined ones, then the client shuts its side
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(post_bytes(request_body()) * requests)
        await writer.drain()
        writer.write_eof()
        out = await _closed_within(reader, 10.0)
        writer.close()
        assert out.count(b"HTTP/1.1 200 OK") == requests and out.endswith(b"0\r\n\r\n")
    assert len(await captured(gateway, 3)) == 3


async def test_half_closing_mid_request_is_a_client_that_went_away(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    writer.write_eof()
    assert await _closed_within(reader, 5.0) == b""
    writer.close()
    (ex,) = await captured(gateway)
    assert ex.outcome is Outcome.CLIENT_GONE

"""An upstream fault matrix: each misbehaviour reaches the client as the upstream sent it (or as
an honest gateway error), and is stored with the outcome it deserves."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import aiohttp
import brotli
import pytest
import zstandard

from opik_cipx.model import Outcome
from opik_cipx.server import Gateway
from tests.support.gateway import captured, post_bytes, post_raw, raw_exchange, request_body
from tests.support.loopback_server import LoopbackServer
from tests.support.raw_upstream import Answer, RawUpstream

pytestmark = pytest.mark.slow

_MSG = json.dumps({"type": "message", "model": "claude-sonnet-4-5", "content": [],
                   "usage": {"input_tokens": 3, "output_tokens": 1}}).encode()
_ERR = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}).encode()
_GZ = gzip.compress(_MSG)
_BR = brotli.compress(_MSG)
_ZSTD = zstandard.ZstdCompressor().compress(_MSG)
_BAD_SSE = b"event: what\ndata: {not json\n\nevent: message_start\ndata: [1,\n\n"


def _http(status: str, headers: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (status.encode(), headers, len(body), body)


# name -> (what the upstream writes, whether it then closes, expected client status or None for a
# broken response, the body the client must get or None, the stored outcome)
CASES: dict[str, tuple[bytes, bool, int | None, bytes | None, Outcome]] = {
    "500 with a body": (_http("500 Internal Server Error", b"Content-Type: application/json\r\n", _ERR),
                        False, 500, _ERR, Outcome.HTTP_ERROR),
    "429 with retry-after": (_http("429 Too Many Requests", b"Retry-After: 7\r\nContent-Type: application/json\r\n",
                                   _ERR), False, 429, _ERR, Outcome.HTTP_ERROR),
    "529 overloaded": (_http("529 Overloaded", b"Content-Type: application/json\r\n", _ERR),
                       False, 529, _ERR, Outcome.HTTP_ERROR),
    "closed before any answer": (b"", True, 502, None, Outcome.UNREACHABLE),
    "garbage status line": (b"NOT HTTP AT ALL\r\n\r\n", True, 502, None, Outcome.UNREACHABLE),
    "truncated chunked body": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"100\r\n{\"type\":\"mess", True, None, None, Outcome.TRUNCATED),
    "reset mid content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"type\"", True, None, None,
                                 Outcome.TRUNCATED),
    "gzip body": (_http("200 OK", b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", _GZ),
                  False, 200, _GZ, Outcome.COMPLETE),
    "br body": (_http("200 OK", b"Content-Type: application/json\r\nContent-Encoding: br\r\n", _BR),
                False, 200, _BR, Outcome.COMPLETE),
    "zstd body": (_http("200 OK", b"Content-Type: application/json\r\nContent-Encoding: zstd\r\n", _ZSTD),
                  False, 200, _ZSTD, Outcome.COMPLETE),
    "malformed SSE": (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(_BAD_SSE), _BAD_SSE), False, 200, _BAD_SSE, Outcome.TRUNCATED),
    "large response header (~8 KB)": (_http("200 OK", b"Content-Type: application/json\r\nX-Pad: " + b"p" * 7_900 + b"\r\n",
                                   _MSG), False, 200, _MSG, Outcome.COMPLETE),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_upstream_fault(case: str, make_settings: object) -> None:
    data, close, status, body, outcome = CASES[case]
    async with RawUpstream(lambda *_: Answer(data, close=close)) as up, \
            Gateway(make_settings(upstream_url=up.url)) as gw:  # type: ignore[operator]
        if status is None:
            with pytest.raises(aiohttp.ClientPayloadError):
                await post_raw(gw.url, request_body(stream=False))
        else:
            got_status, _, got = await post_raw(gw.url, request_body(stream=False))
            assert got_status == status
            if body is not None:
                assert got == body  # byte-identical, still encoded
        (ex,) = await captured(gw)
    assert ex.outcome is outcome, (case, ex.outcome, ex.error)
    if outcome is Outcome.COMPLETE:  # capture decoded the body (whatever its encoding) and read it
        assert ex.usage is not None and ex.usage.input_tokens == 3, (case, ex.usage)



_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
          b'"role":"assistant","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n')


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ScriptedUpstream(LoopbackServer):
    """One answer per connection, written by an async script; records when each connection ended."""

    def __init__(self, script: str, delay: float = 0.0) -> None:
        super().__init__()
        self.script, self.delay = script, delay
        self.released: list[float] = []  # when the gateway closed its side of a connection
        self.let_go = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        if self.script == "slow head":
            await asyncio.sleep(self.delay)
            writer.write(_http("200 OK", b"Content-Type: application/json\r\n", _MSG))
            await writer.drain()
            await reader.read()  # until the gateway lets the connection go
        elif self.script == "endless stream":
            writer.write(_SSE_HEAD + _chunk(_START))
            await writer.drain()
            try:
                async with asyncio.timeout(20):
                    while not reader.at_eof():  # pings, as a long think would send
                        writer.write(_chunk(b"event: ping\ndata: {\"type\": \"ping\"}\n\n"))
                        await writer.drain()
                        try:
                            await asyncio.wait_for(reader.read(1), 0.2)
                        except TimeoutError:
                            pass
            except (TimeoutError, ConnectionError):
                return
        self.released.append(time.monotonic())
        self.let_go.set()


async def test_slow_response_head_within_the_timeout_reaches_the_client(make_settings: object) -> None:
    async with ScriptedUpstream("slow head", delay=1.5) as up, \
            Gateway(make_settings(upstream_url=up.url, upstream_timeout=5.0)) as gw:  # type: ignore[operator]
        started = time.monotonic()
        status, _, got = await post_raw(gw.url, request_body(stream=False))
        waited = time.monotonic() - started
        (ex,) = await captured(gw)
    assert status == 200 and got == _MSG and waited >= 1.4
    assert ex.outcome is Outcome.COMPLETE


async def test_response_head_later_than_the_timeout_is_an_honest_504(make_settings: object) -> None:
    """As documented: no response head within ``CIPX_UPSTREAM_TIMEOUT`` -> 504, stored unreachable."""
    async with ScriptedUpstream("slow head", delay=4.0) as up, \
            Gateway(make_settings(upstream_url=up.url, upstream_timeout=1.0)) as gw:  # type: ignore[operator]
        started = time.monotonic()
        status, _, _ = await post_raw(gw.url, request_body(stream=False))
        waited = time.monotonic() - started
        (ex,) = await captured(gw)
    assert status == 504 and 0.9 <= waited < 3.5, (status, waited)
    assert ex.outcome is Outcome.UNREACHABLE


async def test_client_disconnect_mid_stream_releases_the_upstream_and_is_stored(make_settings: object) -> None:
    async with ScriptedUpstream("endless stream") as up, \
            Gateway(make_settings(upstream_url=up.url)) as gw:  # type: ignore[operator]
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(post_bytes(request_body()))
        await writer.drain()
        async with asyncio.timeout(10):
            seen = b""
            while b"message_start" not in seen:
                seen += await reader.read(4096)
        gone = time.monotonic()
        writer.close()  # the user pressed Esc
        (ex,) = await captured(gw)
        await asyncio.wait_for(up.let_go.wait(), 10)
    assert ex.outcome is Outcome.CLIENT_GONE, (ex.outcome, ex.error)
    assert up.released[0] - gone < 5.0  # the upstream connection was closed, not left streaming


async def test_pipelined_requests_on_one_connection_are_answered_in_order_and_stored(make_settings: object) -> None:
    bodies = [json.dumps({"type": "message", "model": "claude-sonnet-4-5", "content": [],
                          "usage": {"input_tokens": 10 + i, "output_tokens": 1}}).encode() for i in range(3)]
    seen: list[bytes] = []

    def respond(_conn: int, _req: int, _head: bytes, body: bytes) -> Answer:
        seen.append(body)
        return Answer(_http("200 OK", b"Content-Type: application/json\r\n", bodies[len(seen) - 1]))

    async with RawUpstream(respond) as up, Gateway(make_settings(upstream_url=up.url)) as gw:  # type: ignore[operator]
        requests = [request_body(stream=False, max_tokens=100 + i) for i in range(3)]
        wire = b"".join(post_bytes(r, close=(i == 2)) for i, r in enumerate(requests))
        answer = await raw_exchange(gw.port, wire)  # all three in one write
        stored = await captured(gw, 3)
    assert answer.count(b"HTTP/1.1 200") == 3
    positions = [answer.index(b) for b in bodies]
    assert positions == sorted(positions)  # in the order asked
    assert seen == requests  # forwarded byte-identical, in order
    assert sorted(ex.usage.input_tokens for ex in stored if ex.usage) == [10, 11, 12]


@pytest.mark.parametrize("headers", [
    b"X-Pad: " + b"p" * 60_000 + b"\r\n",  # one ~60 KB field, 7x aiohttp's default limit
    b"".join(b"X-H%d: v\r\n" % i for i in range(500)),  # 500 fields, over aiohttp's 128
], ids=["one 60 KB header", "500 headers"])
async def test_huge_response_headers_are_relayed_verbatim(headers: bytes, make_settings: object) -> None:
    # Read on a raw socket: an aiohttp client would itself refuse heads this large.
    data = _http("200 OK", b"Content-Type: application/json\r\n" + headers, _MSG)
    async with RawUpstream(lambda *_: Answer(data)) as up, \
            Gateway(make_settings(upstream_url=up.url)) as gw:  # type: ignore[operator]
        answer = await raw_exchange(gw.port, post_bytes(request_body(stream=False), close=True))
        (ex,) = await captured(gw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == _MSG
    assert all(line in head.split(b"\r\n") for line in headers.split(b"\r\n") if line)
    assert ex.outcome is Outcome.COMPLETE

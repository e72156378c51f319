"""The proxy with real clients: bytes in equal bytes out, both ways, and faults contained."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
from typing import Any

import aiohttp
import anthropic
import pytest

from opik_cipx.model import CallKind, Outcome
from opik_cipx.proxy.relay import HOP_BY_HOP, end_to_end
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic, Turn
from tests.support.gateway import (
    API_KEY,
    SESSION,
    captured,
    free_port,
    post_bytes,
    post_raw,
    raw_exchange,
    request_body,
)

# -- byte transparency ---------------------------------------------------------


async def test_sse_stream_bytes_pass_unchanged_both_ways(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="streamed answer", thinking="let me think")]
    body = request_body()
    status, headers, received = await post_raw(gateway.url, body)
    assert status == 200
    assert upstream.requests[-1].body == body
    assert received == upstream.sent[-1]
    assert headers["content-type"].startswith("text/event-stream")
    (ex,) = await captured(gateway)
    assert ex.kind is CallKind.MESSAGES and ex.outcome is Outcome.COMPLETE
    assert ex.request_body == body and ex.response_body == received
    assert ex.streamed and ex.session_id == SESSION
    assert ex.usage is not None and ex.usage.output_tokens > 0
    assert ex.ttfb_ms is not None and ex.ttft_ms is not None and ex.duration_ms is not None
    assert 0 <= ex.ttfb_ms <= ex.ttft_ms <= ex.duration_ms
    assert ex.cost is not None and ex.cost.total_usd is not None and ex.cost.total_usd > 0


async def test_a_finished_call_needs_no_cyclic_gc_to_be_freed(gateway: Gateway, upstream: FakeAnthropic) -> None:
    # A call and its response parser referred to each other: an idle gateway (which runs no GC)
    # kept every finished call's Recorder, a long stream's worth each, until enough objects piled up.
    upstream.script = [Turn(text="streamed answer")]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        status, _, _ = await post_raw(gateway.url, request_body())
        assert status == 200
        await captured(gateway)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__name__ in ("Call", "Recorder", "HttpResponseParser")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


async def test_json_response_bytes_pass_unchanged(gateway: Gateway, upstream: FakeAnthropic) -> None:
    body = request_body(stream=False)
    status, _, received = await post_raw(gateway.url, body)
    assert status == 200 and received == upstream.sent[-1]
    assert upstream.requests[-1].body == body
    (ex,) = await captured(gateway)
    assert not ex.streamed and ex.usage is not None and ex.usage.input_tokens + ex.usage.cache_read_input_tokens > 0


async def test_gzip_response_relayed_encoded_and_captured_decoded(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="zipped", gzip=True)]
    status, headers, received = await post_raw(gateway.url, request_body(), {"accept-encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert received == upstream.sent[-1]
    (ex,) = await captured(gateway)
    assert ex.response_encoding == "gzip"
    assert ex.response_body == gzip.decompress(received)
    assert ex.outcome is Outcome.COMPLETE and ex.usage is not None


@pytest.mark.parametrize("status", [400, 401, 413, 429, 500, 529])
async def test_upstream_errors_reach_client_unchanged(gateway: Gateway, upstream: FakeAnthropic, status: int) -> None:
    upstream.script = [Turn(status=status)]
    got, headers, received = await post_raw(gateway.url, request_body())
    assert got == status and received == upstream.sent[-1]
    assert headers.get("request-id")
    if status == 429:
        assert headers.get("retry-after")
    (ex,) = await captured(gateway)
    assert ex.status == status and ex.outcome is Outcome.HTTP_ERROR and ex.error


# -- headers -------------------------------------------------------------------------


async def test_end_to_end_headers_pass_and_hop_by_hop_do_not(gateway: Gateway, upstream: FakeAnthropic) -> None:
    sent = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "x-claude-code-session-id": SESSION,
        "x-claude-code-agent-id": "a1b2c3",
        "x-stainless-lang": "js",
        "connection": "keep-alive, x-drop-me",
        "x-drop-me": "1",
        "keep-alive": "timeout=5",
        "authorization": "Bearer sk-ant-oat-SECRET",
    }
    status, headers, _ = await post_raw(gateway.url, request_body(), sent)
    assert status == 200
    got = upstream.requests[-1].headers
    for name in ("anthropic-version", "anthropic-beta", "x-claude-code-session-id", "x-claude-code-agent-id",
                 "x-stainless-lang", "authorization", "x-api-key"):
        assert got[name] == ({**sent, "x-api-key": API_KEY})[name]
    assert "x-drop-me" not in got and "keep-alive" not in got
    assert got["host"] == upstream.url.removeprefix("http://")
    # Response side: the upstream's end-to-end headers come back.
    assert headers["request-id"] and any(k.lower().startswith("anthropic-ratelimit-") for k in headers)
    (ex,) = await captured(gateway)
    assert ex.agent_id == "a1b2c3"
    assert "authorization" not in ex.request_headers and "x-api-key" not in ex.request_headers


async def test_no_client_header_is_invented(gateway: Gateway, upstream: FakeAnthropic) -> None:
    # A bare request: the upstream must not see aiohttp's default Accept-Encoding or User-Agent.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    body = request_body(stream=False)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    got = upstream.requests[-1].headers
    assert "accept-encoding" not in got and "user-agent" not in got and "content-type" not in got


def test_end_to_end_drops_fields_named_by_connection() -> None:
    out = end_to_end([(b"Connection", b"close, X-Private"), (b"X-Private", b"1"), (b"TE", b"trailers"), (b"A", b"b")],
                     HOP_BY_HOP)
    assert out == [(b"A", b"b")]


# -- the official SDK as a client -------------------------------------------------------


async def test_anthropic_sdk_async_stream_and_create(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="Hello from the fake"), Turn(text="Plain JSON")]
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=gateway.url, max_retries=0)
    async with client.messages.stream(model="claude-opus-4-6", max_tokens=32,
                                      messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello from the fake" and final.usage.output_tokens > 0
    msg = await client.messages.create(model="claude-opus-4-6", max_tokens=32,
                                       messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Plain JSON"
    exs = await captured(gateway, 2)
    assert {e.model for e in exs} == {"claude-opus-4-6"} and all(e.outcome is Outcome.COMPLETE for e in exs)
    await client.close()


async def test_anthropic_sdk_sync_client(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="sync stream"), Turn(text="sync json")]

    def call() -> tuple[str, str]:
        client = anthropic.Anthropic(api_key=API_KEY, base_url=gateway.url, max_retries=0)
        with client.messages.stream(model="claude-haiku-4-5-20251001", max_tokens=16,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            streamed = "".join(stream.text_stream)
        created = client.messages.create(model="claude-haiku-4-5-20251001", max_tokens=16,
                                         messages=[{"role": "user", "content": "hi"}])
        return streamed, created.content[0].text

    assert await asyncio.to_thread(call) == ("sync stream", "sync json")


async def test_sdk_sees_upstream_overload_as_overloaded_error(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(status=529)]
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=gateway.url, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(model="claude-opus-4-6", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 529
    await client.close()


# -- streaming is not buffered ----------------------------------------------------------------


async def test_each_sse_event_reaches_client_before_the_next_is_sent(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="a b c d", event_delay=0.15)]  # 7 events, 0.15 s apart
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            first = await r.content.readuntil(b"\n\n")
            # What the upstream had written when the client got its first event.
            written_then = bytes(upstream.requests[-1].response_body)
            rest = await r.read()
    assert first.startswith(b"event: message_start")
    # A buffering proxy holds the first event until the upstream has sent the whole stream; a
    # streaming one delivers it ~0.9 s before the upstream writes message_stop. Ordering, not a clock.
    assert b"message_stop" not in written_then
    assert b"message_stop" in rest and b"message_stop" in upstream.sent[-1]


# -- faults ------------------------------------------------------------------------------------


async def test_unreachable_upstream_gets_anthropic_shaped_502(make_settings: Any) -> None:
    async with Gateway(make_settings(upstream_url=f"http://127.0.0.1:{free_port()}")) as gw:
        status, _, body = await post_raw(gw.url, request_body())
        assert status == 502
        err = json.loads(body)
        assert err["type"] == "error" and err["error"]["type"] == "api_error"
        assert "cannot reach upstream" in err["error"]["message"]
        (ex,) = await captured(gw)
        assert ex.outcome is Outcome.UNREACHABLE and ex.status is None and ex.request_body == request_body()


@pytest.mark.slow
async def test_slow_first_byte_past_the_bound_gets_504(upstream: FakeAnthropic, make_settings: Any) -> None:
    upstream.script = [Turn(first_byte_delay=2.0)]
    async with Gateway(make_settings(upstream_url=upstream.url, upstream_timeout=0.5)) as gw:
        status, _, body = await post_raw(gw.url, request_body())
        assert status == 504 and b"no response within" in body


async def test_slow_first_byte_within_bound_is_waited_for(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="late", first_byte_delay=0.6)]
    status, _, received = await post_raw(gateway.url, request_body())
    assert status == 200 and received == upstream.sent[-1]
    (ex,) = await captured(gateway)
    assert ex.ttfb_ms is not None and ex.ttfb_ms >= 500


async def test_upstream_reset_mid_stream_breaks_client_stream(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="one two three four five six", reset_after_events=4)]
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    (ex,) = await captured(gateway)
    assert ex.outcome is Outcome.TRUNCATED and "mid-response" in (ex.error or "")
    assert ex.usage is not None  # message_start arrived before the reset


async def test_sdk_stream_raises_when_upstream_resets(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="x y z w v u", reset_after_events=3)]
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=gateway.url, max_retries=0)
    # The cut-off stream reaches the SDK as a broken connection, as it would from the API itself.
    with pytest.raises(anthropic.APIConnectionError):
        async with client.messages.stream(model="claude-opus-4-6", max_tokens=8,
                                          messages=[{"role": "user", "content": "x"}]) as stream:
            async for _ in stream:
                pass
    await client.close()


async def test_client_disconnect_mid_stream_cancels_upstream(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text=" ".join(["word"] * 200), event_delay=0.05)]
    async with aiohttp.ClientSession() as s:
        r = await s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY})
        await r.content.readuntil(b"\n\n")
        r.close()  # drop the connection mid-stream
    (ex,) = await captured(gateway)
    assert ex.outcome is Outcome.CLIENT_GONE
    # The upstream saw its client (the gateway) go away long before the 10 s stream would have ended.
    for _ in range(50):
        if upstream.disconnects:
            break
        await asyncio.sleep(0.05)
    assert upstream.disconnects >= 1
    # Nothing left behind: the call is no longer in flight and the client's connection is gone
    # from the relay (the upstream connection was aborted, not pooled for the next call).
    relay = gateway.relay
    assert relay is not None
    for _ in range(50):
        if relay.in_flight == 0 and not relay.connections:
            break
        await asyncio.sleep(0.05)
    assert relay.in_flight == 0 and not relay.connections
    assert relay.pool.take() is None


async def test_a_capture_stage_that_raises_does_not_touch_the_call(upstream: FakeAnthropic, make_settings: Any) -> None:
    def explode(spool: Any, item: Any) -> None:
        raise RuntimeError("bug in a capture stage")

    async with Gateway(make_settings(upstream_url=upstream.url), extra_stages=[explode]) as gw:
        status, _, received = await post_raw(gw.url, request_body())
        assert status == 200 and received == upstream.sent[-1]
        assert gw.capture is not None and await gw.capture.drain(5)
        assert gw.capture.stats.errors == 1 and "bug in a capture stage" in (gw.capture.stats.last_error or "")
        # The store stage ran before the failing one: nothing lost.
        assert len(await captured(gw)) == 1


async def test_a_build_that_raises_does_not_touch_the_call(upstream: FakeAnthropic, make_settings: Any, monkeypatch: Any) -> None:
    import opik_cipx.capture.exchange as capture

    def broken(*a: Any, **k: Any) -> Any:
        raise ValueError("parser bug")

    monkeypatch.setattr(capture, "read_response", broken)
    # In-process capture, so the patched parser is the one that runs.
    async with Gateway(make_settings(upstream_url=upstream.url, capture_worker=False)) as gw:
        status, _, received = await post_raw(gw.url, request_body())
        assert status == 200 and received == upstream.sent[-1]
        assert gw.capture is not None and await gw.capture.drain(5)
        assert gw.capture.stats.errors == 1


# -- bad input is forwarded untouched ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b'{"model": "claude-opus-4-6", "messages": [\xff\xfe\xfa]}',
        b"[" * 20000 + b"]" * 20000,
        b"",
    ],
    ids=["not-json", "invalid-utf8", "deeply-nested", "empty"],
)
async def test_bad_request_bodies_are_forwarded_untouched(gateway: Gateway, upstream: FakeAnthropic, body: bytes) -> None:
    status, _, received = await post_raw(gateway.url, body)
    # Whatever the upstream made of it (the fake answers 400 to non-JSON) reaches the client as is.
    assert status == upstream.requests[-1].status and received == upstream.sent[-1]
    assert upstream.requests[-1].body == body
    (ex,) = await captured(gateway)
    assert ex.request_body == body


@pytest.mark.slow
async def test_thirty_megabyte_body_is_forwarded_byte_for_byte(gateway: Gateway, upstream: FakeAnthropic) -> None:
    blob = ("x" * 1023 + "\n") * (30 * 1024)
    body = request_body(messages=[{"role": "user", "content": blob}], stream=False)
    assert len(body) > 30 * 1024 * 1024
    status, _, _ = await post_raw(gateway.url, body)
    assert status == 200 and upstream.requests[-1].body == body
    (ex,) = await captured(gateway)
    assert ex.request_bytes == len(body)


async def test_unknown_sse_event_types_pass_through(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="hi", extra_events=[("future_event", {"type": "future_event", "x": 1})])]
    status, _, received = await post_raw(gateway.url, request_body())
    assert status == 200 and received == upstream.sent[-1] and b"future_event" in received
    (ex,) = await captured(gateway)
    assert ex.outcome is Outcome.COMPLETE


# -- non-LLM calls ------------------------------------------------------------------------------------


async def test_count_tokens_and_head_are_forwarded_and_counted(gateway: Gateway, upstream: FakeAnthropic) -> None:
    status, _, body = await post_raw(gateway.url, request_body(), path="/v1/messages/count_tokens?beta=true")
    assert status == 200 and "input_tokens" in json.loads(body)
    async with aiohttp.ClientSession() as s:
        async with s.head(gateway.url + "/") as r:
            assert r.status == 200
    exs = await captured(gateway, 2)
    assert sorted(e.kind.value for e in exs) == ["count_tokens", "other"]
    assert not any(e.is_llm_call for e in exs)
    assert all(e.cost is None for e in exs)


# -- state dir and binding -----------------------------------------------------------------------------


async def test_port_file_holds_the_bound_port(gateway: Gateway) -> None:
    port_file = gateway.settings.port_file
    assert port_file.read_text().strip() == str(gateway.port)
    assert (port_file.stat().st_mode & 0o777) == 0o600
    assert (gateway.settings.home.stat().st_mode & 0o777) == 0o700


def test_refuses_to_bind_anything_but_loopback(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="loopback"):
        make_settings(host="0.0.0.0")
    assert make_settings(host="::1").host == "::1"


async def test_api_keys_never_reach_the_spool_file(gateway: Gateway, upstream: FakeAnthropic) -> None:
    await post_raw(gateway.url, request_body(), {"authorization": "Bearer sk-ant-oat-OTHERSECRET", "cookie": "sess=COOKIESECRET"})
    await captured(gateway)
    raw = b"".join(p.read_bytes() for p in gateway.settings.spool_dir.iterdir() if p.is_file())
    for secret in (API_KEY.encode(), b"OTHERSECRET", b"COOKIESECRET"):
        assert secret not in raw


# -- the wire: framings and protocol corners ----------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="first"), Turn(text="second")]
    a, b = request_body(stream=False), request_body(stream=False, max_tokens=7)
    out = await raw_exchange(gateway.port, post_bytes(a) + post_bytes(b, close=True))
    assert out.count(b"HTTP/1.1 200") == 2
    assert out.index(b"first") < out.index(b"second")
    assert [r.body for r in upstream.requests] == [a, b]


async def test_expect_100_continue_is_answered_here(gateway: Gateway, upstream: FakeAnthropic) -> None:
    body = request_body(stream=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                 % len(body))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200") and upstream.requests[-1].body == body
    assert "expect" not in upstream.requests[-1].headers


async def test_chunked_request_body_arrives_whole(gateway: Gateway, upstream: FakeAnthropic) -> None:
    body = request_body(stream=False)
    parts = [body[i : i + 50] for i in range(0, len(body), 50)]

    async def gen():  # aiohttp sends an async iterable with Transfer-Encoding: chunked
        for part in parts:
            yield part
            await asyncio.sleep(0)

    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=gen(), headers={"x-api-key": API_KEY}) as r:
            assert r.status == 200
            await r.read()
    assert upstream.requests[-1].body == body
    (ex,) = await captured(gateway)
    assert ex.request_body == body


async def test_head_then_post_on_one_connection(gateway: Gateway, upstream: FakeAnthropic) -> None:
    # A HEAD answer has no body even with a Content-Length; the next answer must still parse.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        async with s.head(gateway.url + "/") as r:
            head_status = r.status
        async with s.post(gateway.url + "/v1/messages", data=request_body(stream=False),
                          headers={"x-api-key": API_KEY}) as r:
            assert r.status == 200 and (await r.json())["type"] == "message"
    assert head_status == upstream.requests[0].status


async def test_http10_client_gets_a_close_delimited_stream(gateway: Gateway, upstream: FakeAnthropic) -> None:
    upstream.script = [Turn(text="for an old client")]
    body = request_body()
    out = await raw_exchange(gateway.port, b"POST /v1/messages HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"Connection: close" in head
    assert rest == upstream.sent[-1]


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03"])
async def test_malformed_requests_get_a_400_that_says_why(gateway: Gateway, upstream: FakeAnthropic, garbage: bytes) -> None:
    out = await raw_exchange(gateway.port, garbage)
    assert out.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in out
    assert not upstream.requests


async def test_an_endless_request_head_is_refused(gateway: Gateway, upstream: FakeAnthropic) -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(400))
    out = await raw_exchange(gateway.port, head)
    assert out.startswith(b"HTTP/1.1 431") and not upstream.requests


async def test_upstream_garbage_is_a_502(make_settings: Any) -> None:
    from tests.support.raw_upstream import Answer, RawUpstream

    async with RawUpstream(lambda *_: Answer(b"SPDY/9 what\r\n\r\n", close=True)) as up, \
            Gateway(make_settings(upstream_url=up.url)) as gw:
        status, _, received = await post_raw(gw.url, request_body())
        (ex,) = await captured(gw)
    assert status == 502 and b"invalid response" in received and ex.outcome is Outcome.UNREACHABLE


async def test_close_delimited_upstream_body_is_reframed_and_complete(make_settings: Any) -> None:
    from tests.support.raw_upstream import Answer, RawUpstream

    payload = json.dumps({"type": "message", "content": []}).encode()
    answer = Answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + payload, close=True)
    async with RawUpstream(lambda *_: answer) as up, Gateway(make_settings(upstream_url=up.url)) as gw:
        status, headers, received = await post_raw(gw.url, request_body(stream=False))
        (ex,) = await captured(gw)
    assert status == 200 and received == payload and headers.get("transfer-encoding") == "chunked"
    assert ex.outcome is not Outcome.TRUNCATED


async def test_truncated_content_length_body_breaks_the_client(make_settings: Any) -> None:
    from tests.support.raw_upstream import Answer, RawUpstream

    answer = Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"type\":", close=True)
    async with RawUpstream(lambda *_: answer) as up, Gateway(make_settings(upstream_url=up.url)) as gw:
        with pytest.raises(aiohttp.ClientPayloadError):
            await post_raw(gw.url, request_body(stream=False))
        (ex,) = await captured(gw)
    assert ex.outcome is Outcome.TRUNCATED and "mid-response" in (ex.error or "")


async def test_admin_requests_are_served_on_the_same_port(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.url + "/_cipx/health") as r:
            assert r.status == 200
        # The same keep-alive connection: API calls are not forwarded from an admin connection.
        async with s.post(gateway.url + "/v1/messages", data=b"{}") as r:
            assert r.status == 421 and "new connection" in (await r.json())["error"]["message"]


class _Wire(asyncio.Transport):
    """A transport that keeps every write() apart, so a test can count them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def is_reading(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_what_one_upstream_read_holds_reaches_the_client_in_one_write() -> None:
    from opik_cipx.proxy.relay import Relay
    from opik_cipx.proxy.upstream import Connection, Pool, Target

    pool = Pool(Target.parse("http://127.0.0.1:9"))
    upstream_wire, client_wire = _Wire(), _Wire()
    conn = Connection(pool)
    conn.connection_made(upstream_wire)
    pool._idle.append(conn)  # an open pooled connection: the call starts on it at once
    relay = Relay(pool, lambda rec: None, head_timeout=30, seal=lambda rec: None)
    down = relay.protocol()
    down.connection_made(client_wire)
    down.data_received(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert upstream_wire.writes and upstream_wire.writes[-1].endswith(b"{}")

    events = [b"event: ping\ndata: {}\n\n", b"event: content_block_delta\ndata: {\"i\":1}\n\n"]
    chunk = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn.data_received(head + chunk)  # the head and two events, read at once
    assert len(client_wire.writes) == 1
    assert client_wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and client_wire.writes[0].endswith(chunk)

    # A later read goes out as soon as it is parsed: streaming is unchanged.
    late = b"event: message_stop\ndata: {}\n\n"
    conn.data_received(b"%x\r\n%s\r\n" % (len(late), late))
    assert client_wire.writes[1] == b"%x\r\n%s\r\n" % (len(late), late)
    conn.data_received(b"0\r\n\r\n")
    assert client_wire.writes[2] == b"0\r\n\r\n" and len(client_wire.writes) == 3


async def test_an_error_answer_reaches_a_client_that_is_still_sending(gateway: Gateway, upstream: FakeAnthropic) -> None:
    # The gateway refuses the head while the client still has most of its bytes to send: closing
    # at once would reset the connection and could throw the 431 away before the client read it.
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(2000))
    for _ in range(10):
        out = await raw_exchange(gateway.port, head)
        assert out.startswith(b"HTTP/1.1 431") and b"Connection: close" in out
    assert not upstream.requests


async def test_chunked_response_trailers_are_relayed(make_settings: Any) -> None:
    from tests.support.raw_upstream import Answer, RawUpstream

    payload = json.dumps({"type": "message", "content": []}).encode()
    answer = Answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                    b"Trailer: X-Checksum\r\n\r\n%x\r\n%s\r\n0\r\nX-Checksum: sha256=abc\r\nX-Server-Timing: 12\r\n\r\n"
                    % (len(payload), payload))
    async with RawUpstream(lambda *_: answer) as up, Gateway(make_settings(upstream_url=up.url)) as gw:
        out = await raw_exchange(gw.port, post_bytes(request_body(stream=False), close=True))
        (ex,) = await captured(gw)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"\r\nTrailer: X-Checksum" in head
    assert body == b"%x\r\n%s\r\n0\r\nX-Checksum: sha256=abc\r\nX-Server-Timing: 12\r\n\r\n" % (len(payload), payload)
    assert ex.response_body == payload and ex.outcome is not Outcome.TRUNCATED

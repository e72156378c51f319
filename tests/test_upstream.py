"""The upstream leg: TLS, CIPX_UPSTREAM_PROXY (CONNECT tunnel and plain HTTP), the connection pool."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from opik_cipx.model import Outcome
from opik_cipx.proxy.upstream import Target
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic, Turn
from tests.support.gateway import captured, post_raw, request_body
from tests.support.http_proxy import HttpProxy
from tests.support.raw_upstream import Answer, RawUpstream


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A test CA the gateway trusts through SSL_CERT_FILE, as a corporate CA would be configured."""
    authority = trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return authority


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[FakeAnthropic]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    async with FakeAnthropic(ssl_context=ctx) as fake:
        yield fake


# -- Target ---------------------------------------------------------------------------------


def test_target_defaults_and_host_header() -> None:
    t = Target.parse("https://api.anthropic.com")
    assert (t.host, t.port, t.tls, t.host_header, t.base_path) == ("api.anthropic.com", 443, True,
                                                                   b"api.anthropic.com", b"")
    t = Target.parse("http://127.0.0.1:8080/prefix/")
    assert (t.port, t.tls, t.host_header, t.base_path) == (8080, False, b"127.0.0.1:8080", b"/prefix")
    assert t.request_target(b"/v1/messages?beta=true") == b"/prefix/v1/messages?beta=true"


def test_target_through_a_proxy() -> None:
    t = Target.parse("http://up.example:81", "http://alice:s%40cret@127.0.0.1:3128")
    assert (t.proxy_host, t.proxy_port) == ("127.0.0.1", 3128)
    assert t.proxy_auth == b"Basic " + base64.b64encode(b"alice:s@cret")
    # Plain HTTP through a proxy: absolute-form target and the credentials on each request.
    assert t.request_target(b"/v1/x") == b"http://up.example:81/v1/x"
    assert t.proxy_headers.startswith(b"Proxy-Authorization: Basic ")
    # HTTPS goes through a CONNECT tunnel: origin-form, no credentials on the request itself.
    t = Target.parse("https://api.anthropic.com", "127.0.0.1:3128")
    assert t.request_target(b"/v1/x") == b"/v1/x" and t.proxy_headers == b""


def test_settings_refuse_a_non_http_proxy(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="http:// proxy URL"):
        make_settings(upstream_proxy="socks5://127.0.0.1:1080")


# -- TLS ---------------------------------------------------------------------------------------


async def test_https_upstream_bytes_pass_unchanged(tls_upstream: FakeAnthropic, make_settings: Any) -> None:
    tls_upstream.script = [Turn(text="over TLS")]
    body = request_body()
    async with Gateway(make_settings(upstream_url=tls_upstream.url)) as gw:
        for _ in range(2):  # the second call reuses the pooled TLS connection
            status, _, received = await post_raw(gw.url, body)
            assert status == 200 and received == tls_upstream.sent[-1]
            assert tls_upstream.requests[-1].body == body
        assert gw.relay is not None and gw.relay.pool.opened == 1
        exes = await captured(gw, 2)
    assert all(ex.outcome is Outcome.COMPLETE for ex in exes)


async def test_untrusted_upstream_certificate_is_a_502_that_says_so(make_settings: Any) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(ctx)  # a CA nobody trusts
    async with FakeAnthropic(ssl_context=ctx) as up, Gateway(make_settings(upstream_url=up.url)) as gw:
        status, _, received = await post_raw(gw.url, request_body())
    assert status == 502 and b"CERTIFICATE_VERIFY_FAILED" in received and b'"type": "error"' in received


# -- CIPX_UPSTREAM_PROXY ----------------------------------------------------------------------


async def test_https_upstream_through_a_connect_tunnel(tls_upstream: FakeAnthropic, make_settings: Any) -> None:
    tls_upstream.script = [Turn(text="tunnelled")]
    auth = "Basic " + base64.b64encode(b"bob:pw").decode()
    async with HttpProxy(require_auth=auth) as proxy:
        settings = make_settings(upstream_url=tls_upstream.url, upstream_proxy=f"http://bob:pw@127.0.0.1:{proxy.port}")
        async with Gateway(settings) as gw:
            status, _, received = await post_raw(gw.url, request_body())
            status2, _, _ = await post_raw(gw.url, request_body())
    assert status == status2 == 200 and received == tls_upstream.sent[0]
    # One tunnel, reused: the proxy saw a single CONNECT, with the credentials.
    assert [s.request_line for s in proxy.seen] == [f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"]
    assert proxy.seen[0].headers["proxy-authorization"] == auth


async def test_plain_http_upstream_through_a_proxy(upstream: FakeAnthropic, make_settings: Any) -> None:
    async with HttpProxy() as proxy:
        async with Gateway(make_settings(upstream_url=upstream.url, upstream_proxy=proxy.url)) as gw:
            status, _, received = await post_raw(gw.url, request_body(), path="/v1/messages?beta=true")
    assert status == 200 and received == upstream.sent[-1]
    assert proxy.seen[0].request_line == f"POST {upstream.url}/v1/messages?beta=true HTTP/1.1"
    assert upstream.requests[-1].path == "/v1/messages?beta=true"


async def test_a_proxy_that_refuses_the_tunnel_is_a_502(tls_upstream: FakeAnthropic, make_settings: Any) -> None:
    async with HttpProxy(require_auth="Basic nope") as proxy:
        settings = make_settings(upstream_url=tls_upstream.url, upstream_proxy=proxy.url)
        async with Gateway(settings) as gw:
            status, _, received = await post_raw(gw.url, request_body())
            (ex,) = await captured(gw)
    assert status == 502 and b"refused CONNECT" in received and b"407" in received
    assert ex.outcome is Outcome.UNREACHABLE


# -- the pool ------------------------------------------------------------------------------------


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def test_a_pooled_connection_the_upstream_dropped_is_retried_once_on_a_new_one(make_settings: Any) -> None:
    # The first connection answers once, then closes when the next request arrives without
    # answering it: what a keep-alive timeout racing the gateway's next request looks like.
    def respond(conn: int, req: int, head: bytes, body: bytes) -> Answer:
        return Answer(close=True) if (conn, req) == (0, 1) else Answer(OK)

    async with RawUpstream(respond) as up, Gateway(make_settings(upstream_url=up.url)) as gw:
        first = await post_raw(gw.url, request_body(stream=False))
        second = await post_raw(gw.url, request_body(stream=False))
        assert first[0] == second[0] == 200 and second[2] == b"{}"
        assert up.connections == 2 and len(up.heads) == 3  # the dropped request was sent again
        exes = await captured(gw, 2)
    assert [ex.status for ex in exes] == [200, 200]


async def test_a_fresh_connection_that_drops_is_not_retried(make_settings: Any) -> None:
    async with RawUpstream(lambda *_: Answer(close=True)) as up, Gateway(make_settings(upstream_url=up.url)) as gw:
        status, _, received = await post_raw(gw.url, request_body(stream=False))
        assert status == 502 and b"closed the connection before responding" in received
        assert up.connections == 1


async def test_idle_connections_are_reused_not_reopened(upstream: FakeAnthropic, make_settings: Any) -> None:
    async with Gateway(make_settings(upstream_url=upstream.url)) as gw:
        for _ in range(5):
            assert (await post_raw(gw.url, request_body()))[0] == 200
        assert gw.relay is not None and gw.relay.pool.opened == 1
        await asyncio.sleep(0)

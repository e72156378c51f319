"""doctor's upstream check: each step that can fail is named, with its fix."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from opik_cipx.ops.reach import reach_upstream
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.http_proxy import HttpProxy


def test_a_refused_port_is_named_with_the_setting_to_check() -> None:
    reach = reach_upstream("http://127.0.0.1:9", None, timeout=2)
    assert not reach.ok and "cannot connect to 127.0.0.1:9" in reach.detail
    assert reach.fix is not None and "CIPX_UPSTREAM_URL" in reach.fix


def test_a_name_that_does_not_resolve_says_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    # No resolver is asked: the machine may not send DNS anywhere, so the lookup fails here.
    def no_such_host(*_: Any, **__: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    reach = reach_upstream("https://api.anthropic.invalid", None)
    assert not reach.ok and reach.detail.startswith("cannot resolve api.anthropic.invalid")
    assert reach.fix is not None and "DNS" in reach.fix
    reach = reach_upstream("https://api.anthropic.com", "http://proxy.invalid:3128")
    assert "cannot resolve proxy.invalid (the proxy)" in reach.detail
    assert reach.fix is not None and "CIPX_UPSTREAM_PROXY" in reach.fix


async def test_a_plain_http_upstream_connects() -> None:
    async with FakeAnthropic() as up:
        reach = await asyncio.to_thread(reach_upstream, up.url, None)
    assert reach.ok and "resolved, connected in" in reach.detail


# The fake upstream (aiohttp's TLS server) sometimes leaves the socket of a refused handshake for
# the garbage collector; that is the test double's, not the gateway's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tls_is_verified_like_real_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    async with FakeAnthropic(ssl_context=ctx) as up:
        untrusted = await asyncio.to_thread(reach_upstream, up.url, None)
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        trusted = await asyncio.to_thread(reach_upstream, up.url, None)
        async with HttpProxy() as proxy:
            tunnelled = await asyncio.to_thread(reach_upstream, up.url, proxy.url)
            for _ in range(100):  # let the aborted tunnel wind down before the proxy stops
                if not proxy._tasks:
                    break
                await asyncio.sleep(0.02)
    assert not untrusted.ok and "TLS certificate not trusted" in untrusted.detail
    assert untrusted.fix is not None and "CA certificate" in untrusted.fix
    assert trusted.ok and "TLS verified" in trusted.detail
    assert tunnelled.ok and "via proxy 127.0.0.1:" in tunnelled.detail
    assert proxy.seen and proxy.seen[0].request_line.startswith("CONNECT 127.0.0.1:")


async def test_a_proxy_that_refuses_connect_is_named() -> None:
    async with HttpProxy(require_auth="Basic nope") as proxy:
        reach = await asyncio.to_thread(reach_upstream, "https://127.0.0.1:1", proxy.url)
    assert not reach.ok and "refused CONNECT" in reach.detail and "407" in reach.detail

"""A hostile walk of every route the gateway serves itself (issue 17, items 4 and 9).

The routes are read from the app's router, so a route added tomorrow is walked too. Each
is sent, on a raw loopback socket (so nothing "fixes" the request on the way), the Host
and Origin values a DNS-rebinding page or a confused client could produce, a missing or
doubled Host, and oversized heads. None may be answered 2xx, none may leak what
``/_cipx/status`` holds, and the gateway must still answer its own client afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest
from aiohttp import web

pytestmark = pytest.mark.slow


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, concrete path) for every /_cipx route of the app; placeholders filled in."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        path = re.sub(r"\{tail:[^}]*\}", "anything", path)
        path = re.sub(r"\{[^}]+\}", "sample", path)
        if path.startswith("/_cipx"):
            out.add(("GET" if route.method in ("*", "HEAD") else route.method, path))
    return sorted(out)


async def exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send one raw request with ``Connection: close``; the status (0: no answer) and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 10)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", status_line)
    return (int(match.group(1)) if match else 0), rest.partition(b"\r\n\r\n")[2]


def head(method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers),
             "Content-Type: application/json", "Content-Length: 2", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def hostile_hosts(port: int) -> list[list[tuple[str, str]]]:
    ours = f"127.0.0.1:{port}"
    return [
        [("Host", "attacker.example")],
        [("Host", f"attacker.example:{port}")],
        [("Host", f"127.0.0.1.attacker.example:{port}")],  # rebinding names that look loopback
        [("Host", f"localhost.attacker.example:{port}")],
        [("Host", f"127.0.0.1:{port}.attacker.example")],
        [("Host", f"127.0.0.1:{port}@attacker.example")],
        [("Host", f"0.0.0.0:{port}")],
        [("Host", f"127.0.0.2:{port}")],
        [("Host", f"[::ffff:127.0.0.1]:{port}")],
        [("Host", "127.0.0.1")],  # our name without our port: another local service's page
        [("Host", f"127.0.0.1:{port + 1}")],
        [],  # no Host at all
        [("Host", "")],
        [("Host", ours), ("Host", "attacker.example")],  # doubled: whichever one a reader takes
        [("Host", "attacker.example"), ("Host", ours)],
    ]


def hostile_origins(port: int) -> list[list[tuple[str, str]]]:
    ours = ("Host", f"127.0.0.1:{port}")
    return [[ours, ("Origin", origin)] for origin in (
        "http://attacker.example", "null", f"http://127.0.0.1:{port}.attacker.example",
        f"http://localhost:{port + 1}", f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port}@attacker.example",
    )] + [[ours, ("Origin", "http://attacker.example"), ("Origin", f"http://127.0.0.1:{port}")]]


def oversized(port: int) -> list[list[tuple[str, str]]]:
    ours = ("Host", f"127.0.0.1:{port}")
    return [
        [ours, ("X-Big", "a" * 16_000)],  # over aiohttp's per-field limit
        [ours, ("X-Big", "a" * 300_000)],  # over the relay's whole-head limit
        [ours, *((f"X-H{i}", "v") for i in range(20_000))],
    ]


def leaked(body: bytes, gateway: Any, upstream: Any) -> list[str]:
    text = body.decode("utf-8", "replace")
    return [s for s in (f'"pid": {os.getpid()}', f'"pid":{os.getpid()}', upstream.url) if s in text]


async def test_every_route_refuses_hostile_hosts_origins_and_oversized_heads(gateway: Any, upstream: Any) -> None:
    assert gateway.app is not None
    walk = routes(gateway.app)
    assert ("GET", "/_cipx/status") in walk and ("GET", "/_cipx/health") in walk
    port = gateway.port
    cases = hostile_hosts(port) + hostile_origins(port) + oversized(port)
    failures = []
    tried = 0
    for method, path in walk:
        for headers in cases:
            tried += 1
            status, body = await exchange(port, head(method, path, headers), b"{}")
            if 200 <= status < 300 or leaked(body, gateway, upstream):
                failures.append((method, path, [h[:60] for _, h in headers][:3], status, body[:120]))
    # Still answering its own client after the walk.
    status, body = await exchange(port, head("GET", "/_cipx/health", [("Host", f"127.0.0.1:{port}")]), b"{}")
    assert status == 200 and b'"ok"' in body
    print(f"\nsecurity walk: {len(walk)} routes x {len(cases)} probes = {tried} tried, {tried - len(failures)} refused")
    assert not failures, failures

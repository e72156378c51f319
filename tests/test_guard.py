"""The one Host/Origin guard in front of every ``/_cipx`` route (ops/guard.py).

A web page can reach 127.0.0.1 through DNS rebinding, so every route the gateway
serves itself must refuse a foreign ``Host`` and a foreign ``Origin``. The test
walks the routes the app actually registered, so a new route is covered the day
it is added.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from opik_cipx.ops.guard import allowed_hosts, origin_allowed


def _routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, a concrete path) for every /_cipx route; placeholders get a sample value."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        path = re.sub(r"\{tail:[^}]*\}", "anything", path)
        path = re.sub(r"\{[^}]+\}", "sample", path)
        if not path.startswith("/_cipx"):
            continue  # the 421 catch-all: reached only on a connection that began with /_cipx
        method = "GET" if route.method in ("*", "HEAD") else route.method
        out.append((method, path))
    return sorted(set(out))


async def _send(gw: Any, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession(skip_auto_headers=("Host",)) as client:
        async with client.request(method, f"{gw.url}{path}", headers=headers, data=b"{}") as resp:
            return resp.status, await resp.text()


async def test_every_route_refuses_a_foreign_host(gateway: Any) -> None:
    assert gateway.app is not None
    routes = _routes(gateway.app)
    assert ("GET", "/_cipx/status") in routes and ("GET", "/_cipx/health") in routes
    for method, path in routes:
        for host in ("rebind.attacker.example", f"rebind.attacker.example:{gateway.port}", "127.0.0.1:1"):
            status, text = await _send(gateway, method, path, {"Host": host})
            assert status == 403 and "foreign Host" in text, (method, path, host, status)


async def test_every_route_refuses_a_foreign_origin(gateway: Any) -> None:
    assert gateway.app is not None
    for method, path in _routes(gateway.app):
        headers = {"Host": f"127.0.0.1:{gateway.port}", "Origin": "http://attacker.example"}
        status, text = await _send(gateway, method, path, headers)
        assert status == 403 and "cross-origin" in text, (method, path, status)


async def test_our_own_host_names_pass_the_guard(gateway: Any) -> None:
    for host in (f"127.0.0.1:{gateway.port}", f"localhost:{gateway.port}", f"[::1]:{gateway.port}"):
        status, text = await _send(gateway, "GET", "/_cipx/health", {"Host": host})
        assert status == 200 and '"ok": true' in text, host


@pytest.mark.parametrize(
    ("origin", "port", "ok"),
    [
        ("http://127.0.0.1:9909", 9909, True),
        ("http://localhost:9909", 9909, True),
        ("http://127.0.0.1:9910", 9909, False),  # another local service's page
        ("https://127.0.0.1:9909", 9909, False),
        ("http://127.0.0.1:9909/path", 9909, False),
        ("null", 9909, False),
    ],
)
def test_origin_must_name_this_gateway_exactly(origin: str, port: int, ok: bool) -> None:
    assert origin_allowed(origin, port) is ok


def test_allowed_hosts_carry_the_port_except_on_80() -> None:
    assert "127.0.0.1" not in allowed_hosts(9909)
    assert {"127.0.0.1", "127.0.0.1:80"} <= allowed_hosts(80)
    assert allowed_hosts(None) == frozenset()

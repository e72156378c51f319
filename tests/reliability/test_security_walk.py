"""A security walk of every route the gateway serves itself, as a hostile page or process would try it.

The routes are read from the running app, so a route added tomorrow is walked too. For
each one: Host names a DNS-rebinding page could send, Origins a page could send, the
viewer's token missing or wrong, and the answers themselves (no secret in any body a
local caller can read, the viewer's security headers present). The count of probes is
printed for the README's table.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from opik_cipx.viewer import read_token
from tests.support.fake_anthropic import FakeAnthropic
from tests.test_guard import _routes, _send

pytestmark = pytest.mark.slow
SECRET = "sk-ant-api03-walk-secret-0123456789abcdefghijklmnopqrstuvwxyz"


def _hosts(port: int) -> list[str]:
    return ["attacker.example", f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}",
            f"localhost.attacker.example:{port}", f"127.0.0.1:{port + 1}", f"localhost:{port}@attacker.example",
            "0.0.0.0", f"[::ffff:127.0.0.1]:{port}", f"127.1:{port}", f"2130706433:{port}", ""]


def _origins(port: int) -> list[str]:
    return ["http://attacker.example", f"http://attacker.example:{port}", f"http://127.0.0.1:{port + 1}",
            f"https://127.0.0.1:{port}", f"http://127.0.0.1.attacker.example:{port}"]


async def test_every_route_refuses_foreign_hosts_origins_and_missing_tokens(
    gateway: Any, upstream: FakeAnthropic
) -> None:
    assert gateway.app is not None
    routes = _routes(gateway.app)
    assert len(routes) >= 15, routes
    port = gateway.port
    own = f"127.0.0.1:{port}"
    probes = 0
    for method, path in routes:
        for host in _hosts(port):
            status, text = await _send(gateway, method, path, {"Host": host})
            probes += 1
            assert status in (400, 403), (method, path, host, status, text[:200])
        for origin in _origins(port):
            status, _ = await _send(gateway, method, path, {"Host": own, "Origin": origin})
            probes += 1
            assert status == 403, (method, path, origin, status)
        if path.startswith(("/_cipx/api/", "/_cipx/viewer")):
            for cookie in (None, f"cipx_viewer_{port}=wrong", "cipx_viewer_1=whatever"):
                # Our own Origin, so a state change gets past its Origin check to the token's.
                headers = {"Host": own, "Origin": f"http://{own}", **({"Cookie": cookie} if cookie else {})}
                status, text = await _send(gateway, method, path, headers)
                probes += 1
                assert status == 401 and "token" in text, (method, path, cookie, status)
    print(f"security walk: {len(routes)} routes, {probes} probes, all refused")


async def test_no_local_route_answers_with_a_credential(gateway: Any, upstream: FakeAnthropic) -> None:
    """Even for our own Host, nothing the gateway says about itself carries a key or a prompt's secret."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gateway.url}/v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hi"}]},
                          headers={"x-api-key": SECRET, "authorization": f"Bearer {SECRET}"}) as r:
            assert r.status == 200
    assert gateway.capture is not None and await gateway.capture.drain(30)
    token = read_token(gateway.settings.home)
    assert gateway.spool is not None
    (call,) = await gateway.spool.run(lambda sp: sp.calls(limit=1))
    headers = {"Host": f"127.0.0.1:{gateway.port}", "Cookie": f"cipx_viewer_{gateway.port}={token}"}
    leaks, read = [], 0
    for method, path in _routes(gateway.app):
        if method != "GET":
            continue
        status, text = await _send(gateway, method, path.replace("sample", call.id), headers)
        read += status == 200
        if SECRET in text or re.search(r"sk-ant-api03-walk-secret-\w{8,}", text):
            leaks.append(path)
    assert leaks == [] and read >= 10  # the answers were read, not refused

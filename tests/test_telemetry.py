from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from opik_cipx.ship.telemetry import Dsn, Telemetry, scrub


def test_scrub_removes_keys_tokens_emails_and_home_paths() -> None:
    text = ("failed for ada@example.com with sk-ant-api03-abcdef Bearer eyJhbGciOi.x "
            "api_key=SECRET at /home/ada/project/file.py http://u:p@host/x?token=abc "
            + "f" * 40)
    out = scrub(text)
    for secret in ("ada@example.com", "sk-ant", "eyJhbGciOi", "SECRET", "/home/ada", "u:p@", "token=abc", "f" * 40):
        assert secret not in out, secret
    assert out.startswith("failed for")


def test_dsn_parsing() -> None:
    dsn = Dsn.parse("http://pubkey@127.0.0.1:9000/42")
    assert dsn == Dsn("http://127.0.0.1:9000/api/42/store/", "pubkey")
    with pytest.raises(ValueError):
        Dsn.parse("http://127.0.0.1:9000/42")


def test_off_without_dsn_or_when_switched_off() -> None:
    assert not Telemetry(None).enabled
    assert not Telemetry("http://k@127.0.0.1:1/1", "off").enabled
    assert Telemetry("http://k@127.0.0.1:1/1", "on").enabled
    assert not Telemetry(None).report(RuntimeError("x"), "where")


async def test_report_is_scrubbed_authenticated_and_rate_limited() -> None:
    received: list[tuple[dict[str, Any], str]] = []

    async def store(request: web.Request) -> web.Response:
        received.append((await request.json(), request.headers.get("X-Sentry-Auth", "")))
        return web.json_response({"id": "1"})

    app = web.Application()
    app.router.add_post("/api/7/store/", store)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tel = Telemetry(f"http://pub@127.0.0.1:{port}/7", min_interval=60)
    try:
        try:
            raise ValueError("boom for ada@example.com key sk-ant-xyz")
        except ValueError as exc:
            assert tel.report(exc, "shipper.round")
            assert not tel.report(exc, "shipper.round")  # same site within a minute: dropped
        await tel.flush()
        await asyncio.sleep(0)
    finally:
        await tel.aclose()
        await runner.cleanup()
    (event, auth), = received
    assert "sentry_key=pub" in auth
    value = event["exception"]["values"][0]
    assert value["type"] == "ValueError" and "ada@example.com" not in json.dumps(event) and "sk-ant" not in json.dumps(event)
    assert event["tags"] == {"where": "shipper.round"}
    assert all(set(f) == {"module", "function", "lineno"} for f in value["stacktrace"]["frames"])
    assert tel.sent == 1

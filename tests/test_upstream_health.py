"""Upstream health: counted from finished calls, shown by status, logged without flooding."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from opik_cipx.config import Settings
from opik_cipx.ops.upstream_health import UpstreamHealth
from opik_cipx.proxy.recorder import Recorder
from opik_cipx.server import Gateway


def _failed(message: str = "cannot connect to upstream: Connection refused") -> Recorder:
    rec = Recorder("POST", "/v1/messages", None)
    rec.unreachable(502, message)
    return rec


def _answered(status: int = 200) -> Recorder:
    rec = Recorder("POST", "/v1/messages", None)
    rec.response_head(status, ())
    return rec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_count_in_a_row_and_any_answer_resets_them() -> None:
    health = UpstreamHealth("https://api.anthropic.com", clock=Clock())
    assert health.problem() is None
    for _ in range(3):
        health.observe(_failed())
    assert health.consecutive_failures == 3 and health.failures_total == 3
    problem = health.problem()
    assert problem is not None and "unreachable" in problem and "Connection refused" in problem
    assert "3 call(s) in a row" in problem and "opik-cipx doctor" in problem
    health.observe(_answered(529))  # overloaded is still an answer: the upstream is reachable
    assert health.consecutive_failures == 0 and health.failures_total == 3 and health.problem() is None


def test_the_log_says_it_once_a_minute_and_when_it_recovers(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = UpstreamHealth("https://up", clock=clock)
    with caplog.at_level(logging.WARNING, logger="opik_cipx.upstream"):
        for _ in range(50):
            health.observe(_failed())
            clock.now += 1
        clock.now += 60
        health.observe(_failed())
        health.observe(_answered())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "unreachable" in lines[0] and "1 call(s)" in lines[0]
    assert "50 call(s)" in lines[1]
    assert "reachable again after 51" in lines[2]


def test_a_bad_recorder_never_raises() -> None:
    UpstreamHealth("u").observe(object())


async def test_status_names_an_unreachable_upstream(make_settings: Callable[..., Settings]) -> None:
    # Port 9 (discard) is closed on loopback: every call is refused.
    async with Gateway(make_settings(upstream_url="http://127.0.0.1:9", capture_worker=False)) as gw:
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.post(f"{gw.url}/v1/messages", json={"model": "m", "messages": []}) as resp:
                    assert resp.status == 502
            async with client.get(f"{gw.url}/_cipx/status") as resp:
                doc: dict[str, Any] = await resp.json()
            async with client.get(f"{gw.url}/_cipx/metrics") as resp:
                metrics = await resp.text()
    assert doc["upstream_health"]["consecutive_failures"] == 2
    assert doc["upstream_health"]["last_error"]["status"] == 502
    assert doc["problems"][0].startswith("upstream http://127.0.0.1:9 unreachable:")
    assert "opik_cipx_upstream_consecutive_failures 2" in metrics
    assert "opik_cipx_upstream_failures_total 2" in metrics

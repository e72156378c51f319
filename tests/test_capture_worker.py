"""Capture in a child process: off the proxy's GIL, restarted if it dies, nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp

from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.test_proxy import API_KEY, captured, request_body


async def test_captures_are_stored_by_a_child_process(gateway: Gateway, upstream: FakeAnthropic) -> None:
    assert gateway._worker is not None and gateway._worker.pid is not None
    assert gateway._worker.pid != os.getpid()
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            assert r.status == 200
            await r.read()
    (ex,) = await captured(gateway)
    assert ex.usage is not None and ex.cost is not None and ex.request_body == request_body()
    # The after-commit stages saw it too.
    assert gateway.metrics.requests["messages"] == 1


async def test_a_killed_worker_is_replaced_and_its_batch_retried(gateway: Gateway, upstream: FakeAnthropic) -> None:
    worker = gateway._worker
    assert worker is not None and worker._proc is not None
    proc = worker._proc
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
                await r.read()
    rows = await captured(gateway, 3)
    assert len(rows) == 3 and worker.restarts == 1
    assert gateway.capture is not None and gateway.capture.stats.errors == 0


async def test_worker_stops_with_the_gateway(upstream: FakeAnthropic, make_settings: Any) -> None:
    async with Gateway(make_settings(upstream_url=upstream.url)) as gw:
        assert gw._worker is not None and gw._worker._proc is not None
        proc = gw._worker._proc
    assert proc.returncode == 0

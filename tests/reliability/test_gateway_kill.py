"""kill -9 of the gateway process under load, then a restart: every call a client saw answered is
stored exactly once (a call sealed just before the kill may be stored though its client saw the
connection break: journaled before its last bytes, by design)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from opik_cipx.config import Settings
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.gateway import API_KEY, request_body

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 4


def _start(upstream_url: str) -> tuple[subprocess.Popen[bytes], int]:
    settings = Settings()
    settings.port_file.unlink(missing_ok=True)
    env = {**os.environ, "CIPX_PORT": "0", "CIPX_UPSTREAM_URL": upstream_url,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "gateway"), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "opik_cipx.cli", "proxy"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if settings.port_file.exists() and (text := settings.port_file.read_text().strip()):
            return proc, int(text)
        assert proc.poll() is None, "the gateway exited at start"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the gateway did not start")


def _stored_markers(spool_path: Path) -> tuple[list[str], list[str]]:
    conn = sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True)
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM exchanges WHERE kind = 'messages'")]
    finally:
        conn.close()
    from opik_cipx.store.spool import Spool, connect

    spool = Spool(connect(spool_path))
    try:
        markers = []
        for exchange_id in ids:
            ex = spool.get(exchange_id)
            assert ex is not None
            markers.append(json.loads(ex.request_body)["messages"][0]["content"])
    finally:
        spool.close()
    return ids, markers


async def test_kill_9_of_the_gateway_under_load_then_restart_loses_nothing(upstream: FakeAnthropic) -> None:
    proc, port = _start(upstream.url)
    children = psutil.Process(proc.pid).children(recursive=True)
    answered: set[str] = set()
    counter = iter(range(10**6))
    loaded = asyncio.Event()  # enough calls answered: time to kill

    async def client() -> None:
        async with aiohttp.ClientSession() as s:
            while True:
                marker = f"call-{next(counter)}"
                try:
                    async with s.post(f"http://127.0.0.1:{port}/v1/messages", headers={"x-api-key": API_KEY},
                                      data=request_body(messages=[{"role": "user", "content": marker}])) as r:
                        await r.read()
                        if r.status == 200:
                            answered.add(marker)
                            if len(answered) >= 150:
                                loaded.set()
                except (aiohttp.ClientError, OSError):
                    return  # the gateway is gone

    tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    await asyncio.wait_for(loaded.wait(), 60)
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.gather(*tasks)
    proc.wait(10)
    for child in children:  # the capture worker ends at its parent's EOF
        with contextlib.suppress(psutil.NoSuchProcess):
            child.wait(10)

    proc, port = _start(upstream.url)  # replays what the journal holds
    try:
        spool_path = Settings().spool_path
        deadline = time.monotonic() + 60
        while True:
            ids, markers = _stored_markers(spool_path)
            if answered <= set(markers) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert answered <= set(markers), f"{len(answered - set(markers))} answered calls were lost"
    assert len(ids) == len(set(ids)) and len(markers) == len(set(markers))  # 0 duplicates
    assert len(markers) <= len(answered) + CLIENTS  # at most the calls in flight at the kill
    print(f"gateway kill: {len(answered)} answered, {len(markers)} stored after restart")

"""Opik down, then failing, stalling and coming back, while the gateway restarts cleanly and by kill -9.

300 calls over 20 sessions go through a gateway subprocess while Opik refuses connections;
the gateway is restarted with SIGTERM after 100 calls and killed with SIGKILL after 200.
Then Opik answers 503 three times, stalls each batch for 2 s, and the gateway is killed
again in the middle of the drain. When Opik is healthy again every stored call's span is
there exactly once (one span id per exchange; a batch sent twice is an upsert of the same
ids), every trace arrives, and the drain time is printed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.gateway import free_port
from tests.support.opik_server import OpikContractServer
from tests.test_opik_outage import ROOT, body, start_gateway, stop_gateway, stored_exchanges, wait_listening

pytestmark = pytest.mark.slow
CALLS = 300  # over 20 sessions (body() in tests/test_opik_outage.py)


def _headers(i: int) -> dict[str, str]:
    return {"content-type": "application/json", "x-api-key": "sk-ant-test",
            "X-Claude-Code-Session-Id": f"00000000-0000-4000-8000-{i % 20:012d}"}


async def _settled(spool: Path, want: int, timeout: float = 120) -> set[str]:
    """The stored calls once capture has caught up (the worker runs SCHED_IDLE)."""
    deadline = time.monotonic() + timeout
    seen, since = stored_exchanges(spool), time.monotonic()
    while time.monotonic() - since < 1.5 or (len(seen) < want and time.monotonic() < deadline):
        await asyncio.sleep(0.25)
        now = stored_exchanges(spool)
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


async def test_flapping_opik_and_three_restarts_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    state = home / ".opik-cipx"
    port = free_port()
    log = tmp_path / "gateway.log"
    async with FakeAnthropic() as upstream, OpikContractServer() as opik:
        await opik.down()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT / "gateway"),
               "HOME": str(home), "CIPX_HOME": str(state), "CIPX_PORT": str(port),
               "CIPX_UPSTREAM_URL": upstream.url, "CIPX_SHUTDOWN_GRACE": "1",
               "OPIK_CIPX_BASE_URL": opik.url, "OPIK_CC_TRACING_ENABLED": "true"}
        proc = start_gateway(env, log)
        restarts: list[str] = []

        async def restart(sig: signal.Signals) -> None:
            nonlocal proc
            proc.send_signal(sig)
            proc.wait(timeout=30)
            restarts.append(sig.name)
            proc = start_gateway(env, log)
            await wait_listening(port, proc)

        try:
            await wait_listening(port, proc)
            async with aiohttp.ClientSession() as s:
                for i in range(CALLS):
                    if i in (100, 200):
                        await restart(signal.SIGTERM if i == 100 else signal.SIGKILL)
                    while True:  # like Claude Code: a call the dying gateway dropped is sent again
                        try:
                            async with s.post(f"http://127.0.0.1:{port}/v1/messages", data=body(i),
                                              headers=_headers(i)) as r:
                                await r.read()
                                if r.status == 200:
                                    break
                        except (aiohttp.ClientError, OSError):
                            pass
                        await asyncio.sleep(0.05)
            spool = state / "spool" / "spool.sqlite3"
            expected = await _settled(spool, CALLS)
            assert len(expected) >= CALLS and opik.requests == []

            # Opik comes back sick: three 503s, then every batch stalls 2 s; kill -9 mid-drain.
            opik.fail(503, times=3)
            opik.stall = 2.0
            await opik.up()
            started = time.monotonic()
            while not opik.spans and time.monotonic() - started < 60:  # noqa: ASYNC110 - polling another task's state
                await asyncio.sleep(0.1)
            assert opik.spans, "nothing shipped while Opik stalled"
            await restart(signal.SIGKILL)
            opik.stall = 0.0

            def llm_ids() -> dict[str, set[str]]:
                out: dict[str, set[str]] = {}
                for span in opik.spans.values():
                    if span["type"] == "llm":
                        out.setdefault(span["metadata"]["cc"]["exchange_id"], set()).add(span["id"])
                return out

            while set(llm_ids()) != expected or {s["trace_id"] for s in opik.spans.values()} - set(opik.traces):
                assert time.monotonic() - started < 90, f"{len(llm_ids())}/{len(expected)}; {log.read_text()[-2000:]}"
                await asyncio.sleep(0.2)
            drained = time.monotonic() - started
            ids = llm_ids()
            assert all(len(v) == 1 for v in ids.values())  # no exchange under two span ids
            assert len(opik.spans) == len(expected)  # nothing extra
            assert opik.invalid == []
            resent = sum(1 for n in Counter(opik.writes).values() if n > 1)
            statuses = Counter(opik.batch_statuses)
            assert statuses[503] == 3
            print(f"opik flapping: {len(expected)} stored, {len(ids)} spans once each, restarts {restarts}, "
                  f"{resent} ids re-sent as upserts, drained in {drained:.1f} s")
            assert restarts == ["SIGTERM", "SIGKILL", "SIGKILL"]
        finally:
            stop_gateway(proc)

"""Capture in a child process: off the proxy's GIL, restarted if it dies, nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import aiohttp
import pytest

from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.gateway import API_KEY, captured, request_body


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


async def test_an_idle_worker_is_ended_and_the_next_batch_starts_a_fresh_one(
    gateway: Gateway, upstream: FakeAnthropic
) -> None:
    worker = gateway._worker
    assert worker is not None and worker._proc is not None
    worker._retire_after = 0.2  # RETIRE_SECONDS, shortened
    first = worker._proc
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            await r.read()
        await captured(gateway)
        for _ in range(100):
            if worker.retired:
                break
            await asyncio.sleep(0.05)
        assert worker.retired == 1 and worker.pid is None and first.returncode == 0  # ended cleanly
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            await r.read()
    assert len(await captured(gateway, 2)) == 2
    assert worker.pid is not None and worker.pid != first.pid
    assert worker.restarts == 0  # an idle end is not a crash
    assert gateway.capture is not None and gateway.capture.stats.errors == 0


async def test_worker_stops_with_the_gateway(upstream: FakeAnthropic, make_settings: Any) -> None:
    async with Gateway(make_settings(upstream_url=upstream.url)) as gw:
        assert gw._worker is not None and gw._worker._proc is not None
        proc = gw._worker._proc
    assert proc.returncode == 0


async def test_journaled_calls_reach_the_worker_by_reference_not_by_pipe(
    gateway: Gateway, upstream: FakeAnthropic, monkeypatch: Any
) -> None:
    from opik_cipx.capture import worker as capture_worker

    sent: list[list[bytes]] = []
    item = capture_worker._item
    monkeypatch.setattr(capture_worker, "_item", lambda rec: sent.append(item(rec)) or sent[-1])
    big = request_body(messages=[{"role": "user", "content": "x" * 300_000}])
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=big, headers={"x-api-key": API_KEY}) as r:
            await r.read()
    (ex,) = await captured(gateway)
    assert ex.request_body == big
    # What went down the pipe was a journal reference: a few dozen bytes, not the 300 KB body.
    assert sum(map(len, sent[-1])) < 100


async def test_a_journal_reference_that_does_not_hold_the_call_is_resent_inline(
    gateway: Gateway, upstream: FakeAnthropic, monkeypatch: Any
) -> None:
    from opik_cipx.capture import worker as capture_worker

    def wrong_place(rec: Any) -> list[bytes]:
        assert rec.frame is not None and rec.released  # the parent holds only the reference
        offset, length = rec.frame
        # The child is told a place one byte off; the parent still knows the right one.
        return [capture_worker._KIND.pack(capture_worker._REF),
                capture_worker._REF_AT.pack(offset + 1, length, rec.id.encode("ascii"))]

    monkeypatch.setattr(capture_worker, "_item", wrong_place)
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            await r.read()
    (ex,) = await captured(gateway)
    assert ex.request_body == request_body() and ex.usage is not None
    assert gateway.capture is not None and gateway.capture.stats.errors == 0


async def test_a_call_the_journal_lost_is_reported_not_stored_empty(
    gateway: Gateway, upstream: FakeAnthropic, monkeypatch: Any
) -> None:
    from opik_cipx.capture import worker as capture_worker

    item = capture_worker._item

    def truncated_under_it(rec: Any) -> list[bytes]:
        assert gateway.journal is not None
        os.truncate(gateway.journal.path, 0)  # e.g. the state directory was wiped by hand
        return item(rec)

    monkeypatch.setattr(capture_worker, "_item", truncated_under_it)
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            assert r.status == 200
            await r.read()
    assert gateway.capture is not None
    assert await gateway.capture.drain(10)
    assert gateway.capture.stats.captured == 0 and gateway.capture.stats.errors == 1
    assert "no longer in the journal" in (gateway.capture.stats.last_error or "")
    assert await gateway.spool.run(lambda sp: sp.last(5)) == []


def test_the_worker_waits_for_a_lull_but_not_forever(tmp_path: Any) -> None:
    import threading
    import time

    from opik_cipx.proxy.busy import BusyFlag
    from opik_cipx.proxy.recorder import HeaderList, Recorder

    proxy_side = BusyFlag(tmp_path / "busy", write=True)
    worker_side = BusyFlag(tmp_path / "busy", write=False)
    rec = Recorder("POST", "/v1/messages", HeaderList([]))
    rec.finish()

    proxy_side.set(True)
    assert worker_side.busy
    threading.Timer(0.2, proxy_side.set, args=(False,)).start()
    t0 = time.perf_counter()
    worker_side.wait_for_lull(rec, max_defer=10.0)
    assert 0.15 < time.perf_counter() - t0 < 2.0  # resumed when the proxy went quiet

    proxy_side.set(True)
    rec.t_end = time.perf_counter()
    t0 = time.perf_counter()
    worker_side.wait_for_lull(rec, max_defer=0.3)  # steady traffic: a call still gets captured
    assert 0.25 < time.perf_counter() - t0 < 2.0


async def test_the_proxy_raises_the_busy_flag_only_while_a_call_is_in_flight(
    gateway: Gateway, upstream: FakeAnthropic
) -> None:
    from tests.support.fake_anthropic import Turn

    worker = gateway._worker
    assert worker is not None and not worker.busy.busy
    upstream.script = [Turn(text="slow", event_delay=0.1)]
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
            await r.content.readuntil(b"\n\n")
            assert worker.busy.busy
            await r.read()
    assert not worker.busy.busy


async def test_a_call_that_kills_the_worker_is_quarantined_and_the_journal_rewinds(
    upstream: FakeAnthropic, make_settings: Any, monkeypatch: Any
) -> None:
    from opik_cipx.capture import worker as capture_worker
    from opik_cipx.model import Outcome
    from tests.support import poison_worker

    monkeypatch.setattr(capture_worker, "worker_argv", poison_worker.argv)
    async with Gateway(make_settings(upstream_url=upstream.url)) as gw:
        assert gw.capture is not None and gw.journal is not None
        gw.capture.busy(True)  # hold the batch until all six are in, so they share one batch
        poison = request_body(messages=[{"role": "user", "content": poison_worker.PILL.decode()}])
        bodies = [request_body(), request_body(), poison, request_body(), request_body(), request_body()]
        async with aiohttp.ClientSession() as s:
            for body in bodies:
                async with s.post(gw.url + "/v1/messages", data=body, headers={"x-api-key": API_KEY}) as r:
                    assert r.status == 200
                    await r.read()
        gw.capture.busy(False)
        rows = await captured(gw, 6, timeout=60)
        assert await gw.capture.drain(60)
        by_outcome = sorted((ex.outcome, ex.request_body == poison) for ex in rows)
        assert by_outcome == [(Outcome.COMPLETE, False)] * 5 + [(Outcome.UNPARSEABLE, True)]
        (bad,) = [ex for ex in rows if ex.outcome is Outcome.UNPARSEABLE]
        assert bad.response_body and "capture worker failed twice" in (bad.error or "")
        stats = gw.capture.stats
        assert stats.quarantined == 1 and stats.held == 0 and stats.captured == 6 and gw.capture.pending == 0
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.url + "/_cipx/status") as r:
                doc = (await r.json())["capture"]
        assert (doc["quarantined"], doc["held"], doc["pending"]) == (1, 0, 0) and doc["retried"] >= 2
        # Every call is confirmed, so the journal rewinds and the next calls reuse its start.
        await asyncio.to_thread(gw.journal.flush)
        assert gw.journal._end == 0
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/messages", data=request_body(), headers={"x-api-key": API_KEY}) as r:
                await r.read()
        assert len(await captured(gw, 7, timeout=30)) == 7


def test_the_worker_gives_freed_memory_back_once_idle_and_not_while_batches_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opik_cipx.capture import worker as worker_module

    trimmed = threading.Event()
    monkeypatch.setattr(worker_module, "give_back_freed_memory", trimmed.set)
    trim = worker_module._IdleTrim(0.05)
    trim.arm()
    trim.cancel()  # the next batch came in time
    assert not trimmed.wait(0.2)
    trim.arm()
    assert trimmed.wait(5)
    trim.cancel()


def test_the_worker_lets_go_of_each_call_s_bodies_once_it_is_stored(tmp_path: Any) -> None:
    from opik_cipx.attribute.analysis import Captured
    from opik_cipx.capture import worker as worker_module
    from opik_cipx.capture.stages import Failure, store_batch
    from opik_cipx.model import CallKind, Exchange
    from opik_cipx.proxy.recorder import HeaderList, Recorder
    from opik_cipx.store.spool import Spool, connect

    batch = []
    for n in range(4):
        rec = Recorder("POST", "/v1/messages", HeaderList([]))
        rec.body = b'{"n":%d}' % n
        rec.finish()
        batch.append(rec)
    ids = [rec.id for rec in batch]
    held: list[int] = []
    failures: list[Failure] = []

    def build(rec: Recorder) -> Captured:
        held.append(len(batch))  # what the batch still holds while this call is built
        return Captured(Exchange(id=rec.id, started_at=1.0, method="POST", path="/v1/messages",
                                 kind=CallKind.MESSAGES, request_body=rec.body))

    spool = Spool(connect(tmp_path / "spool.sqlite3"))
    try:
        done = store_batch(spool, worker_module._consumed(batch), build, [lambda sp, item: None], failures,
                           keep=lambda item: Captured(worker_module.without_bodies(item.exchange)))
    finally:
        spool.close()
    assert held == [3, 2, 1, 0] and failures == []
    assert [item.exchange.id for item in done] == ids
    assert all(item.exchange.request_body == b"" and item.attribution is None for item in done)


def test_the_worker_drops_a_call_s_bytes_once_its_exchange_is_built() -> None:
    from opik_cipx.attribute.analysis import Captured
    from opik_cipx.capture import worker as worker_module
    from opik_cipx.capture.exchange import build_exchange
    from opik_cipx.proxy.recorder import HeaderList, Recorder

    rec = Recorder("POST", "/v1/messages", HeaderList([]))
    rec.body = b"{}"
    rec.chunk(b"x" * 1000)
    rec.finish()
    item = worker_module._releasing(lambda r: Captured(build_exchange(r, None)))(rec)
    assert rec.released and len(rec.response) == 0  # the Exchange holds what the stages store
    assert item.exchange.response_body == b"x" * 1000 and item.exchange.request_body == b"{}"


def test_the_worker_imports_neither_the_shipper_s_http_client_nor_pydantic() -> None:
    # aiohttp (~11 MiB) and pydantic with pydantic-settings (~11 MiB) in a process that never
    # sends a request and gets its settings validated from its parent (settings_view).
    import subprocess
    import sys

    code = (
        "import sys, opik_cipx.cli, opik_cipx.capture.worker, opik_cipx.pricing, "
        "opik_cipx.store.sessions, opik_cipx.store.spool, opik_cipx.capture.pipeline; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'uvloop', 'pydantic',"
        " 'pydantic_settings', 'pydantic_core') or m == 'opik_cipx.config'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

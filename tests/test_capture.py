"""CaptureSink without sockets: errors contained, backlog bounded."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from opik_cipx.attribute.analysis import Captured
from opik_cipx.capture.exchange import build_exchange
from opik_cipx.capture.quarantine import quarantined as quarantined_exchange
from opik_cipx.capture.sink import CaptureSink
from opik_cipx.capture.stages import PoisonBatch
from opik_cipx.model import Exchange, Outcome
from opik_cipx.proxy.recorder import HeaderList, Recorder


def finished_call() -> Recorder:
    rec = Recorder("POST", "/v1/messages", HeaderList([(b"x-api-key", b"k")]))
    rec.body = b"{}"
    rec.finish()
    return rec


class Store:
    def __init__(self) -> None:
        self.batches: list[list[Recorder]] = []

    async def __call__(self, batch: list[Recorder]) -> tuple[list[Any], list[Any]]:
        self.batches.append(batch)
        return [], []


async def run_sink(sink: CaptureSink) -> asyncio.Task[None]:
    return asyncio.create_task(sink.run())


async def test_a_store_that_raises_is_counted_held_and_retried_not_raised() -> None:
    outage = [True]
    stored: list[str] = []

    async def flaky(batch: list[Recorder]) -> Any:
        if outage[0]:
            raise OSError("disk full")
        stored.extend(rec.id for rec in batch)
        return [], []

    errors: list[str] = []
    journal = Journal()
    sink = CaptureSink(flaky, [], on_error=lambda where, exc: errors.append(where), journal=journal,
                       retry_after=0.05)
    task = await run_sink(sink)
    rec = finished_call()
    sink.submit(rec)
    assert not await sink.drain(0.3)  # not silently done: the call is held, and says so
    assert sink.stats.held == 1 and sink.pending == 1 and sink.stats.errors >= 1
    assert set(errors) == {"store batch"} and journal.confirmed == []  # the journal keeps it
    outage[0] = False
    assert await sink.drain(5.0)
    assert stored == [rec.id] and journal.confirmed == [rec.id]
    assert sink.stats.held == 0 and sink.pending == 0 and sink.stats.retried >= 1
    task.cancel()


class Journal:
    """The journal's confirm side, recorded."""

    def __init__(self) -> None:
        self.confirmed: list[str] = []
        self.appended: list[str] = []

    def append(self, rec: Recorder) -> None:
        self.appended.append(rec.id)

    def confirm(self, ids: list[str]) -> None:
        self.confirmed.extend(ids)


class PoisonedStore:
    """Dies (as the worker process would) on any batch holding a poisoned call."""

    def __init__(self, poisoned: set[str]) -> None:
        self.poisoned = poisoned
        self.calls: list[int] = []
        self.stored: list[str] = []

    async def __call__(self, batch: list[Recorder]) -> tuple[list[Any], list[Any]]:
        self.calls.append(len(batch))
        if any(rec.id in self.poisoned for rec in batch):
            raise PoisonBatch("capture worker failed twice on this batch: exit status -11")
        self.stored.extend(rec.id for rec in batch)
        return [Captured(build_exchange(rec, None)) for rec in batch], []


async def test_a_batch_the_store_dies_on_is_bisected_to_the_one_call_which_is_quarantined() -> None:
    calls = [finished_call() for _ in range(16)]
    poison = calls[11]
    poison.body = b'{"model": "claude", "messages": [\x00 not json'
    poison.response_head(200, ((b"content-type", b"text/event-stream"), (b"set-cookie", b"s=1")))
    poison.chunk(b"event: message_start\ndata: {broken\n\n")
    store = PoisonedStore({poison.id})
    quarantined: list[tuple[Exchange, str]] = []

    async def quarantine(rec: Recorder, error: str) -> Captured:
        ex = quarantined_exchange(rec, error)
        quarantined.append((ex, error))
        return Captured(ex)

    journal = Journal()
    sink = CaptureSink(store, [], max_batch=16, journal=journal, quarantine=quarantine)
    for rec in calls:
        sink.submit(rec)
    task = await run_sink(sink)
    assert await sink.drain(5.0)
    task.cancel()
    # Every other call stored; the poisoned one found in log2(16) splits, never sent alone twice.
    assert sorted(store.stored) == sorted(rec.id for rec in calls if rec is not poison)
    assert store.calls == [16, 8, 8, 4, 2, 2, 1, 1, 4]
    ((ex, error),) = quarantined
    assert ex.id == poison.id and ex.outcome is Outcome.UNPARSEABLE
    assert ex.request_body == poison.body and ex.response_body == b"".join(poison.chunks)
    assert "exit status -11" in error and error in (ex.error or "") and "set-cookie" not in ex.response_headers
    # Counted truthfully, and the journal released every call: it can rewind again.
    assert sink.stats.captured == 16 and sink.stats.quarantined == 1 and sink.stats.held == 0
    assert sink.stats.retried == 16 + 8 + 4 + 2
    assert sorted(journal.confirmed) == sorted(rec.id for rec in calls)


async def test_a_poisoned_call_whose_bytes_are_gone_is_reported_not_retried_forever() -> None:
    rec = finished_call()
    errors: list[str] = []

    async def lost(rec: Recorder, error: str) -> Captured:
        raise ValueError(f"call {rec.id} is no longer in the journal")

    journal = Journal()
    sink = CaptureSink(PoisonedStore({rec.id}), [], journal=journal, quarantine=lost,
                       on_error=lambda where, exc: errors.append(where))
    task = await run_sink(sink)
    sink.submit(rec)
    assert await sink.drain(5.0)
    task.cancel()
    assert errors == ["quarantine"] and sink.stats.held == 0 and journal.confirmed == [rec.id]


async def test_past_the_byte_bound_calls_are_dropped_from_memory_not_blocking() -> None:
    store = Store()
    sink = CaptureSink(store, [], max_pending_bytes=10)  # not running: nothing drains
    first, second = finished_call(), finished_call()
    first.body = second.body = b"x" * 8
    sink.submit(first)
    sink.submit(second)
    assert sink.pending == 1 and sink.stats.dropped == 1


async def test_a_store_that_reads_the_journal_gets_references_and_memory_is_freed() -> None:
    store = Store()
    sink = CaptureSink(store, [], max_pending_bytes=10, by_reference=True)
    journaled, not_journaled = finished_call(), finished_call()
    journaled.body = not_journaled.body = b"x" * 8
    journaled.chunks = [b"data: {}\n\n"]
    journaled.frame = (0, 100)  # where the journal wrote it
    sink.submit(journaled)
    sink.submit(not_journaled)  # its journal write failed: its bytes must stay
    assert journaled.released and journaled.body_parts == [] and journaled.chunks == []
    assert not not_journaled.released and not_journaled.body == b"x" * 8
    # Released calls weigh nothing against the in-memory bound: both wait, none dropped.
    assert sink.pending == 2 and sink.stats.dropped == 0


async def test_without_by_reference_journaled_calls_keep_their_bytes() -> None:
    sink = CaptureSink(Store(), [])
    rec = finished_call()
    rec.frame = (0, 100)
    sink.submit(rec)
    assert not rec.released and rec.body == b"{}"


async def test_large_calls_are_batched_by_bytes_as_well_as_by_count() -> None:
    # The store holds a whole batch at once: sixteen large streams must not go as one.
    store = Store()
    sink = CaptureSink(store, [], max_batch=16, max_batch_bytes=1000, by_reference=True)
    calls = [finished_call() for _ in range(5)]
    for i, rec in enumerate(calls):
        rec.frame = (i * 600, 600)  # journaled, so weighed by its frame once its bytes are dropped
        sink.submit(rec)
    small = [finished_call() for _ in range(3)]
    for rec in small:
        sink.submit(rec)
    task = await run_sink(sink)
    assert await sink.drain(2.0)
    task.cancel()
    assert [len(b) for b in store.batches] == [2, 2, 4]  # cut once past the bound; small calls ride along


async def test_batches_wait_for_a_lull_in_forwarding_but_not_forever() -> None:
    import time

    store = Store()
    sink = CaptureSink(store, [], max_defer=0.3)
    task = await run_sink(sink)
    sink.busy(True)  # a call is being forwarded
    sink.submit(finished_call())
    await asyncio.sleep(0.1)
    assert store.batches == []  # held while the proxy is busy
    sink.submit(finished_call())
    sink.busy(False)
    assert await sink.drain(2.0)
    assert [len(b) for b in store.batches] == [2]  # released at the lull, as one batch

    sink.busy(True)  # steady traffic: still captured once the first call has waited max_defer
    t0 = time.perf_counter()
    sink.submit(finished_call())
    assert await sink.drain(2.0)
    assert 0.2 < time.perf_counter() - t0 < 1.5 and len(store.batches) == 2
    task.cancel()


def test_call_ids_are_distinct_version_4_uuids() -> None:
    ids = [finished_call().id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for raw in ids[:50]:
        parsed = uuid.UUID(raw)
        assert parsed.hex == raw and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def fast_call(body: dict[str, Any]) -> Recorder:
    import json

    rec = Recorder("POST", "/v1/messages", HeaderList([(b"content-type", b"application/json")]))
    rec.body = json.dumps(body).encode()
    rec.response_head(200, ((b"content-type", b"application/json"),))
    rec.chunk(json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-6", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "ok"}],
        "usage": {"input_tokens": 1000, "output_tokens": 100},
    }).encode())
    rec.finish()
    return rec


def test_a_top_level_speed_in_the_request_prices_the_call_at_fast_mode_rates() -> None:
    from opik_cipx.attribute.resume import WalkCache
    from opik_cipx.capture.stages import prepare
    from opik_cipx.pricing import FAST_MODE_MULTIPLIER, PriceTable

    prices = PriceTable.builtin()
    base = {"model": "claude-opus-4-6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    standard = prepare(fast_call(base), prices, walk_cache=WalkCache())
    fast = prepare(fast_call({**base, "speed": "fast"}), prices, walk_cache=WalkCache())
    assert standard.exchange.usage is not None and standard.exchange.usage.speed is None
    assert fast.exchange.usage is not None and fast.exchange.usage.speed == "fast"
    assert fast.exchange.cost.total_usd == pytest.approx(standard.exchange.cost.total_usd * FAST_MODE_MULTIPLIER)
    assert fast.attribution is not None and standard.attribution is not None
    shared = sum(t.cost_usd or 0.0 for t in fast.attribution.items)
    assert shared == pytest.approx(sum(t.cost_usd or 0.0 for t in standard.attribution.items) * FAST_MODE_MULTIPLIER)
    # The same pure build, as replay and the viewer use it, finds it in the body too.
    assert build_exchange(fast_call({**base, "speed": "fast"}), prices).usage.speed == "fast"  # type: ignore[union-attr]


def test_a_speed_key_inside_a_tool_input_is_not_the_call_s_speed() -> None:
    from opik_cipx.capture.stages import prepare
    from opik_cipx.pricing import PriceTable

    body = {"model": "claude-opus-4-6", "max_tokens": 10, "messages": [
        {"role": "user", "content": "set it"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "Configure", "input": {"speed": "fast"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]},
    ]}
    captured = prepare(fast_call(body), PriceTable.builtin())
    assert captured.exchange.usage is not None and captured.exchange.usage.speed is None

"""CaptureSink without sockets: errors contained, backlog bounded."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from opik_cipx.capture.sink import CaptureSink
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


async def test_a_store_that_raises_is_counted_not_raised() -> None:
    async def broken(batch: list[Recorder]) -> Any:
        raise OSError("disk full")

    errors: list[str] = []
    sink = CaptureSink(broken, [], on_error=lambda where, exc: errors.append(where))
    task = await run_sink(sink)
    sink.submit(finished_call())
    assert await sink.drain(2.0)
    assert sink.stats.errors == 1 and errors == ["store batch"]
    task.cancel()


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

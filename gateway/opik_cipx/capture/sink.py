"""The one error boundary between the proxy and everything downstream.

:class:`CaptureSink` queues finished recorders without blocking the hot path; its
worker takes every call waiting and hands the lot to a store (the capture worker
process, or the spool's thread) in one hop. A bug in any stage is logged and
counted here; the proxied call finished long before and never sees it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..proxy.busy import MAX_DEFER
from ..proxy.recorder import Recorder
from .stages import AfterStage, Failure, PoisonBatch, StoreBatch, stage_name

if TYPE_CHECKING:
    from ..attribute.analysis import Captured
    from .quarantine import Quarantine

log = logging.getLogger(__name__)


@dataclass
class CaptureStats:
    submitted: int = 0
    captured: int = 0
    dropped: int = 0  # backlog full: journaled only, captured at the next start
    errors: int = 0  # a stage raised; the call itself was already done
    last_error: str | None = None
    batches: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    held: int = 0  # now: the store failed on them (e.g. disk full); kept, journaled, retried
    quarantined: int = 0  # stored raw as unparseable: the store died on each of them
    retried: int = 0  # calls handed to the store again after a failed attempt


class CaptureSink:
    """Queue plus worker: the single place capture errors are contained.

    The worker takes every finished call waiting (up to ``max_batch``) and hands
    the lot to ``store`` in one hop — the capture worker process, or the spool's
    thread — where each is built, analyzed and stored with its attribution and
    outbox records, and the batch commits once. Every call is journaled before
    that, so a crash loses nothing; the batching keeps the backlog short.

    A batch the store dies on (:class:`~.stages.PoisonBatch`) is split in halves until
    the call to blame is alone; that one goes to ``quarantine`` (stored raw, as
    unparseable) and the rest are stored normally. A store that fails without dying
    (e.g. the disk is full) leaves its batch *held*: counted, kept in the journal,
    retried after ``retry_after`` seconds (doubling up to ``max_retry_after``).
    """

    def __init__(
        self,
        store: StoreBatch,
        after_stages: list[AfterStage],
        *,
        max_pending: int = 10_000,
        max_pending_bytes: int = 128 * 1024**2,
        max_batch: int = 16,
        max_batch_bytes: int = 4 * 1024**2,
        on_error: Callable[[str, BaseException], object] | None = None,
        journal: Any = None,
        by_reference: bool = False,
        max_defer: float = MAX_DEFER,
        quarantine: Quarantine | None = None,
        retry_after: float = 2.0,
        max_retry_after: float = 60.0,
    ) -> None:
        self._store = store
        self._quarantine = quarantine
        self._held: list[Recorder] = []
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._backoff = retry_after
        self._retry_at = 0.0
        self._journal = journal  # journal.Journal: makes the backlog survive kill -9
        # The store reads journaled calls back from the journal (the capture worker does): their
        # bytes need not wait in this process's memory. Freed at once, the next call's buffers
        # reuse the same warm pages instead of faulting in fresh ones.
        self._by_reference = by_reference
        self._after_stages = after_stages
        self._max_batch = max_batch
        # A batch is also cut at this many bytes of calls (past its first call): the store holds a
        # whole batch at once, and sixteen 6 MB streams would be a hundred MB in the worker. At 4 MiB
        # a long stream is a batch of its own (the worker 48 MiB mid-batch, 55 at 8 MiB); calls of
        # a few hundred KB still go sixteen to a transaction.
        self._max_batch_bytes = max_batch_bytes
        self._on_error = on_error
        self._queue: asyncio.Queue[Recorder] = asyncio.Queue(max_pending)
        # Bodies waiting in memory; past the bound new calls are only journaled (the next
        # start captures them), so a flood of large calls cannot grow the gateway without end.
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._roomy = asyncio.Event()  # the backlog is under half its bounds (see room())
        self._roomy.set()
        # Clear while the proxy is forwarding a call (see busy()): batches wait for a lull, so
        # the hand-off to the store (threads, pipes, the worker waking) stays off calls' paths.
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._max_defer = max_defer
        self.stats = CaptureStats()

    def busy(self, busy: bool) -> None:
        """The proxy went from idle to forwarding a call, or back."""
        if busy:
            self._quiet.clear()
        else:
            self._quiet.set()

    def submit(self, rec: Recorder) -> None:
        """Called from the hot path: never blocks, never raises."""
        try:
            if self._journal is not None and not rec.journaled:
                self._journal.append(rec)
            if self._by_reference and rec.frame is not None:
                rec.release()
            size = rec.size
            if self._pending_bytes + size > self._max_pending_bytes and self._pending_bytes:
                self.stats.dropped += 1
                return
            self._queue.put_nowait(rec)
            self._pending_bytes += size
            self._idle.clear()
            self.stats.submitted += 1
        except asyncio.QueueFull:
            self.stats.dropped += 1
        except Exception:  # nothing may escape into the proxy
            self.stats.dropped += 1
            log.exception("capture submit failed")

    async def room(self, timeout: float = 30.0) -> None:
        """Wait until the backlog is under half its bounds: for a producer (the start-up replay
        of a left-over journal) that should not shed calls the way the hot path may. Bounded:
        a store that is failing (held calls) must not stall the gateway's start for good."""
        self._note_room()
        try:
            async with asyncio.timeout(timeout):
                await self._roomy.wait()
        except TimeoutError:
            pass

    def _note_room(self) -> None:
        if self._queue.qsize() < self._queue.maxsize // 2 and self._pending_bytes < self._max_pending_bytes // 2:
            self._roomy.set()
        else:
            self._roomy.clear()

    async def run(self) -> None:
        while True:
            batch, queued = await self._next_batch()
            try:
                await self._process(batch)
            finally:
                if queued:
                    for _ in batch:
                        self._queue.task_done()
                self._settle()
                # Not held while waiting for the next call: when idle, that can be for hours.
                del batch

    async def _next_batch(self) -> tuple[list[Recorder], bool]:
        """The next calls to store, and whether they came off the queue (else: held ones due for
        a retry). Held calls are retried on their own schedule, also while no new call comes."""
        while True:
            if self._held and time.monotonic() >= self._retry_at:
                batch, self._held = self._held[: self._max_batch], self._held[self._max_batch :]
                self.stats.held = len(self._held)
                for rec in batch:
                    self._pending_bytes -= rec.size
                self.stats.retried += len(batch)
                return batch, False
            try:
                if self._held:
                    async with asyncio.timeout(max(0.0, self._retry_at - time.monotonic())):
                        first = await self._queue.get()
                else:
                    first = await self._queue.get()
            except TimeoutError:
                continue
            batch = [first]
            await self._lull(first)
            weight = _weight(first)
            while len(batch) < self._max_batch and weight < self._max_batch_bytes and not self._queue.empty():
                rec = self._queue.get_nowait()
                batch.append(rec)
                weight += _weight(rec)
            for rec in batch:
                self._pending_bytes -= rec.size
            self._note_room()
            return batch, True

    def _settle(self) -> None:
        if self._queue.empty() and not self._held:
            self._idle.set()

    async def _lull(self, first: Recorder) -> None:
        """Wait until no call is being forwarded, or until ``first`` has waited ``max_defer``."""
        if self._quiet.is_set():
            return
        left = (first.t_end or time.perf_counter()) + self._max_defer - time.perf_counter()
        if left > 0:
            try:
                async with asyncio.timeout(left):
                    await self._quiet.wait()
            except TimeoutError:
                pass

    async def _process(self, batch: list[Recorder]) -> None:
        failures: list[Failure] = []
        try:
            done = await self._store_bisecting(batch, failures)
        except Exception as exc:  # noqa: BLE001 - e.g. the disk is full: hold the calls, keep serving
            failures.append(("store batch", exc))
            done = []
            self._hold(batch)
        else:
            self._backoff = self._retry_after
            if self._journal is not None:
                # Committed, quarantined, or failed for good in build: no replay is owed.
                self._journal.confirm([rec.id for rec in batch])
        self.stats.batches += 1
        for item in done:
            self.stats.captured += 1
            kind = item.exchange.kind.value
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        for stage in self._after_stages:
            try:
                await stage(done)
            except Exception as exc:  # noqa: BLE001
                failures.append((stage_name(stage), exc))
        for where, error in failures:
            self._fail(where, error)

    async def _store_bisecting(self, batch: list[Recorder], failures: list[Failure]) -> list[Captured]:
        """Store ``batch``; if the store dies on it, store each half, down to the single call
        that kills it, which is quarantined. Raises what the store raised for any other reason."""
        try:
            done, failed = await self._store(batch)
        except PoisonBatch as exc:
            if len(batch) == 1 and self._quarantine is not None:
                (rec,) = batch
                try:
                    item = await self._quarantine(rec, str(exc))
                except ValueError as lost:  # its bytes are gone: report it, never retry forever
                    failures.append(("quarantine", lost))
                    return []
                self.stats.quarantined += 1
                failures.append(("quarantine", exc))
                return [item]
            if len(batch) == 1:
                raise
            log.warning("capture: the store died on a batch of %d calls; splitting it", len(batch))
            mid = len(batch) // 2
            self.stats.retried += len(batch)
            first = await self._store_bisecting(batch[:mid], failures)
            return first + await self._store_bisecting(batch[mid:], failures)
        failures.extend(failed)
        return done

    def _hold(self, batch: list[Recorder]) -> None:
        """Keep calls the store failed on for a later retry: never silently, always counted."""
        self._held.extend(batch)
        self.stats.held = len(self._held)
        # Still in memory: counted against the bound, so a long outage sheds new calls to the
        # journal (captured at the next start) rather than growing the gateway.
        self._pending_bytes += sum(rec.size for rec in batch)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._max_retry_after)

    def _fail(self, where: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{where}: {type(exc).__name__}: {exc}"
        log.error("capture stage %s failed", where, exc_info=exc)
        if self._on_error is not None:
            try:
                self._on_error(where, exc)
            except Exception:  # error reporting must not fail the worker
                log.exception("capture error hook failed")

    async def drain(self, timeout: float) -> bool:
        """Wait until every submitted call is processed; False if the bound ran out."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    @property
    def pending(self) -> int:
        """Calls waiting to be stored: queued, and held for a retry."""
        return self._queue.qsize() + len(self._held)


def _weight(rec: Recorder) -> int:
    """The bytes the store will hold for a call: its journal frame when it reads it from there."""
    return rec.frame[1] if rec.released and rec.frame is not None else rec.size

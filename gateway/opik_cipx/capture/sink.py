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
from typing import Any

from ..proxy.busy import MAX_DEFER
from ..proxy.recorder import Recorder
from .stages import AfterStage, Failure, StoreBatch, stage_name

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


class CaptureSink:
    """Queue plus worker: the single place capture errors are contained.

    The worker takes every finished call waiting (up to ``max_batch``) and hands
    the lot to ``store`` in one hop — the capture worker process, or the spool's
    thread — where each is built, analyzed and stored with its attribution and
    outbox records, and the batch commits once. Every call is journaled before
    that, so a crash loses nothing; the batching keeps the backlog short.
    """

    def __init__(
        self,
        store: StoreBatch,
        after_stages: list[AfterStage],
        *,
        max_pending: int = 10_000,
        max_pending_bytes: int = 128 * 1024**2,
        max_batch: int = 16,
        on_error: Callable[[str, BaseException], object] | None = None,
        journal: Any = None,
        by_reference: bool = False,
        max_defer: float = MAX_DEFER,
    ) -> None:
        self._store = store
        self._journal = journal  # journal.Journal: makes the backlog survive kill -9
        # The store reads journaled calls back from the journal (the capture worker does): their
        # bytes need not wait in this process's memory. Freed at once, the next call's buffers
        # reuse the same warm pages instead of faulting in fresh ones.
        self._by_reference = by_reference
        self._after_stages = after_stages
        self._max_batch = max_batch
        self._on_error = on_error
        self._queue: asyncio.Queue[Recorder] = asyncio.Queue(max_pending)
        # Bodies waiting in memory; past the bound new calls are only journaled (the next
        # start captures them), so a flood of large calls cannot grow the gateway without end.
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._idle = asyncio.Event()
        self._idle.set()
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

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._lull(batch[0])
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._process(batch)
            finally:
                for rec in batch:
                    self._pending_bytes -= rec.size
                    self._queue.task_done()
                if self._queue.empty():
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
            done, failures = await self._store(batch)
        except Exception as exc:  # noqa: BLE001 - e.g. the disk is full: count it, keep serving
            failures.append(("store batch", exc))
            done = []
        else:
            if self._journal is not None:
                # Committed (or failed for good in build): either way no replay is owed.
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
        return self._queue.qsize()

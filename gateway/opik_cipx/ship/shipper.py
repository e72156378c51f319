"""The background sender: the outbox to Opik, oldest first, until Opik has acknowledged it.

:meth:`Shipper.run` first derives any stored call that a crash left without a
mark (through the :class:`~opik_cipx.ship.stage.SpanStage`, as capture would
have), then sends the outbox in batches (<= 1000 items, bounded bytes), deletes
what Opik acknowledged, backs off with jitter on connection errors, 429
(``RateLimit-Reset`` honoured) and 5xx, and sets permanent 4xx refusals aside
with their reason, splitting a refused batch to find the records at fault.
:meth:`Shipper.after` is the after-commit capture stage that wakes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ..attribute.analysis import Captured, analyze, response_content
from ..config import Settings
from ..model import Exchange
from ..pricing import PriceTable
from ..store.attribution import stored_commands
from ..store.spool import AsyncSpool, Spool
from .opik_client import OpikClient, SendResult, Verdict
from .outbox import MAX_BATCH_ITEMS, Item, Outbox
from .privacy import iso_now
from .stage import SpanStage
from .telemetry import Telemetry

log = logging.getLogger(__name__)
RECOVER_WINDOW = 24 * 3600.0  # a crash leaves at most this far back to derive again


class Shipper:
    def __init__(
        self,
        settings: Settings,
        spool: AsyncSpool,
        *,
        stage: SpanStage | None = None,
        prices: Callable[[], PriceTable | None] = lambda: None,
        telemetry: Telemetry | None = None,
        base_delay: float = 0.25,
        max_delay: float = 5.0,
        blocked_delay: float = 30.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.stage = stage or SpanStage(settings)
        self._prices = prices
        self.telemetry = telemetry or Telemetry(settings.sentry_dsn, settings.sentry)
        self.base_url = settings.opik_url
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._blocked_delay = blocked_delay
        self._request_timeout = request_timeout
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.client: OpikClient | None = None
        self._failures = 0
        self._snapshot: dict[str, Any] = {}
        self.last_shipped: dict[str, Any] | None = None
        self.last_error: dict[str, Any] | None = None
        self.state = "local spool only" if self.base_url is None else "idle"

    def _outbox(self, spool: Spool) -> Outbox:
        return self.stage.outbox(spool)

    def status(self) -> dict[str, Any]:
        """Everything ``opik-cipx status`` shows about shipping; cheap, no I/O."""
        snap = self._snapshot
        stage = self.stage.status()
        return {
            "destination": stage["destination"],
            "state": self.state,
            "enabled_default": stage["enabled_default"],
            "enabled_source": stage["enabled_source"],
            "queue_depth": snap.get("queue_depth", 0),
            "outbox_bytes": snap.get("outbox_bytes", 0),
            "outbox_max_bytes": self.settings.outbox_max_bytes,
            "shipped": snap.get("shipped", 0),
            "rejected": snap.get("rejected", 0),
            "last_rejection": snap.get("last_rejection"),
            "dropped": snap.get("dropped", 0) + snap.get("shed", 0),
            "dropped_records": snap.get("dropped", 0),
            "shed_content": snap.get("shed", 0),
            "not_shipped": {"disabled": snap.get("disabled", 0), "sampled_out": snap.get("sampled_out", 0)},
            "last_shipped": self.last_shipped,
            "last_error": self.last_error,
            "telemetry": "on" if self.telemetry.enabled else "off",
            "capture_content": stage["capture_content"],
            "sample_rate": stage["sample_rate"],
            "config_error": stage["config_error"],
            "stage_errors": stage["stage_errors"],
        }

    async def refresh(self) -> dict[str, Any]:
        self._snapshot = await self.spool.run(lambda s: self._outbox(s).stats())
        return self._snapshot

    async def after(self, items: list[Captured]) -> None:
        """After-commit capture stage, on the loop: refresh what status shows and wake the sender."""
        if any(item.exchange.is_llm_call for item in items):
            await self.refresh()
            self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        if self.base_url is None:
            log.info("no Opik destination configured: spans stay in the local spool")
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4, enable_cleanup_closed=True),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self.client = OpikClient(
            self._session,
            self.base_url,
            api_key=self.settings.opik_api_key,
            workspace=self.settings.opik_workspace,
            timeout=self._request_timeout,
        )
        self._task = asyncio.create_task(self.run(), name="cipx-shipper")

    async def stop(self, timeout: float = 5.0) -> None:
        """Give the queue ``timeout`` seconds to drain, then stop; what is left ships next start."""
        if self._task is not None:
            self._wake.set()
            try:
                async with asyncio.timeout(timeout):
                    while not (self._idle.is_set() and not self._snapshot.get("queue_depth")):
                        self._idle.clear()
                        self._wake.set()
                        await self._idle.wait()
            except TimeoutError:
                log.warning("shutdown: %s Opik records left in the outbox", self._snapshot.get("queue_depth"))
            self._stopping.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.telemetry.aclose()

    async def run(self) -> None:
        try:
            await self._recover()
        except Exception as exc:  # recovery is best effort; shipping must still start
            log.exception("recovery scan failed")
            self.telemetry.report(exc, "shipper.recover")
        while True:
            try:
                progressed = await self._ship_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad round must not end shipping
                log.exception("shipper round failed")
                self.telemetry.report(exc, "shipper.round")
                self._note_error(f"internal: {type(exc).__name__}: {exc}")
                await self._sleep(self._backoff())
                continue
            if not progressed:
                self._idle.set()
                self._wake.clear()
                try:
                    # Wake on new records; look again now and then in case a wake was missed.
                    async with asyncio.timeout(5.0):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _recover(self) -> None:
        since = time.time() - RECOVER_WINDOW
        ids = await self.spool.run(lambda s: self._outbox(s).unmarked_since(since))
        if ids:
            log.info("deriving spans for %d stored calls a restart left behind", len(ids))
        prices = self._prices()
        for exchange_id in ids:
            ex = await self.spool.get(exchange_id)
            if ex is None:
                continue
            def derive(s: Spool, ex: Exchange = ex) -> None:
                # On the spool thread: attribution is CPU work and stays off the event loop.
                content = response_content(ex)
                commands = stored_commands(s.conn, ex.id)
                self.stage.record(s, Captured(ex, analyze(ex, prices, content, commands), content, commands))

            try:
                await self.spool.run(derive)
            except Exception as exc:
                log.exception("could not derive spans for %s", exchange_id)
                self.telemetry.report(exc, "shipper.recover_one")
        if ids:
            await self.refresh()

    async def _ship_once(self) -> bool:
        """Send one batch; True when the outbox may hold more to send right away."""
        assert self.client is not None
        batch = await self.spool.run(
            lambda s: self._outbox(s).next_batch(max_items=MAX_BATCH_ITEMS, max_bytes=self.settings.ship_batch_bytes)
        )
        if not batch:
            self._snapshot["queue_depth"] = 0
            return False
        self._idle.clear()
        ok = await self._send(batch[0].kind, batch)
        await self.refresh()
        return ok

    async def _send(self, kind: str, items: list[Item]) -> bool:
        assert self.client is not None
        result = await self.client.send_batch(kind, [i.payload for i in items])
        self.stage.debug("%s batch of %d: %s %s", kind, len(items), result.status, result.verdict)
        if result.verdict is Verdict.OK:
            await self.spool.run(lambda s: self._outbox(s).ack(items))
            self._failures = 0
            self.state = "shipping"
            self.last_shipped = {"at": iso_now(), "span_id": items[-1].id, "kind": kind, "count": len(items)}
            return True
        if result.verdict is Verdict.REJECT:
            if len(items) == 1:
                reason = f"HTTP {result.status}: {result.message}"
                await self.spool.run(lambda s: self._outbox(s).reject(items[0], status=result.status, reason=reason))
                log.warning("Opik refused %s %s for good: %s", kind, items[0].id, reason)
                return True
            # Opik answers for the batch as a whole: halve it until the refused records stand alone.
            half = len(items) // 2
            return await self._send(kind, items[:half]) and await self._send(kind, items[half:])
        self._failures += 1
        self._note_error(self._describe(result))
        if result.verdict is Verdict.BLOCKED:
            self.state = "blocked"
            await self._sleep(self._blocked_delay)
        else:
            self.state = "retrying"
            wait = result.retry_after if result.retry_after is not None else self._backoff()
            await self._sleep(min(wait, 60.0))
        return result.verdict is not Verdict.BLOCKED

    @staticmethod
    def _describe(result: SendResult) -> str:
        where = f"HTTP {result.status}" if result.status is not None else "connection"
        return f"{where}: {result.message[:300]}"

    def _note_error(self, message: str) -> None:
        self.last_error = {"at": iso_now(), "message": message}

    def _backoff(self) -> float:
        # Full jitter: spread retries of several gateways; the cap keeps recovery quick.
        ceiling = min(self._max_delay, self._base_delay * 2 ** min(self._failures, 16))
        return random.uniform(ceiling / 2, ceiling)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass

"""From committed Exchanges to Opik: the span stage, the outbox and the background shipper.

Two halves meet in the spool:

* :meth:`Shipper.stage` is a capture stage. It runs after an Exchange is
  stored, decides whether the call is shipped (destination, enablement marker,
  sample rate), analyses it off the event loop and writes its trace/span
  records to the outbox in one transaction with the exchange's mark.
* :meth:`Shipper.run` is the background task. It first derives any stored call
  that a crash left without a mark, then sends the outbox oldest first in
  batches (<= 1000 items, bounded bytes), deletes what Opik acknowledged, backs
  off with jitter on connection errors, 429 (``RateLimit-Reset`` honoured) and
  5xx, and sets permanent 4xx refusals aside with their reason, splitting a
  refused batch to find the records at fault.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from ..attribute import analysis
from ..attribute.analysis import Captured, response_content
from ..config import Settings
from ..model import Exchange
from ..pricing import PriceTable
from ..store.attribution import stored_commands
from ..store.spool import AsyncSpool, Spool
from .enablement import Enablement, SessionLookup
from .identity import IdentitySource, claude_json_path, render_project
from .opik_client import OpikClient, SendResult, Verdict, mask_key
from .outbox import DISABLED, MAX_BATCH_ITEMS, NO_DESTINATION, SAMPLED_OUT, Item, Outbox
from .privacy import LiveOptions, iso_now, sampled
from .span import CallFacts, SessionContext, call_facts
from .telemetry import Telemetry

log = logging.getLogger(__name__)
RECOVER_WINDOW = 24 * 3600.0  # a crash leaves at most this far back to derive again
_SPAWN_LOG = "spawn.log"


def _valid_uuid(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class Shipper:
    def __init__(
        self,
        settings: Settings,
        spool: AsyncSpool,
        *,
        prices: Callable[[], PriceTable | None] = lambda: None,
        sessions: Callable[[], SessionLookup | None] = lambda: None,
        telemetry: Telemetry | None = None,
        enablement: Enablement | None = None,
        identity: IdentitySource | None = None,
        options: LiveOptions | None = None,
        base_delay: float = 0.25,
        max_delay: float = 5.0,
        blocked_delay: float = 30.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._prices = prices
        self._sessions = sessions
        home = Path(os.path.expanduser("~"))
        self.telemetry = telemetry or Telemetry(settings.sentry_dsn, settings.sentry)
        self.enablement = enablement or Enablement(home)
        self.identity = identity or IdentitySource(claude_json_path(home))
        self.options = options or LiveOptions(settings)
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
        self.stage_errors = 0
        self._debug_log = self._make_debug_log()

    # -- configuration views --------------------------------------------------------------

    def _outbox(self, spool: Spool) -> Outbox:
        return Outbox(spool.conn, max_bytes=self.settings.outbox_max_bytes)

    def _make_debug_log(self) -> logging.Logger:
        logger = logging.getLogger("opik_cipx.shipper.debug")
        if self.settings.opik_debug and not any(
            isinstance(h, logging.FileHandler) and h.baseFilename.endswith(_SPAWN_LOG) for h in logger.handlers
        ):
            self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.settings.logs_dir / _SPAWN_LOG, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
        return logger

    def _debug(self, message: str, *args: Any, force: bool = False) -> None:
        if self.settings.opik_debug or force:
            self._debug_log.debug(message, *args)

    def project_name(self, env: dict[str, str] | None = None, account_uuid: str | None = None) -> str:
        env = env or {}
        template = env.get("OPIK_CIPX_PROJECT") or env.get("OPIK_CC_PROJECT") or self.settings.opik_project
        return render_project(template, self.identity.get().with_request(account_uuid))

    def status(self) -> dict[str, Any]:
        """Everything ``opik-cipx status`` shows about shipping; cheap, no I/O."""
        opts = self.options.get()
        default = self.enablement.decide()
        snap = self._snapshot
        destination = None
        if self.base_url is not None:
            destination = {
                "base_url": self.base_url,
                "workspace": self.settings.opik_workspace,
                "project": self.project_name(),
                "api_key_masked": mask_key(self.settings.opik_api_key),
            }
        return {
            "destination": destination,
            "state": self.state,
            "enabled_default": default.enabled,
            "enabled_source": default.source,
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
            "capture_content": opts.capture_content,
            "sample_rate": opts.sample_rate,
            "config_error": self.options.error,
            "stage_errors": self.stage_errors,
        }

    async def refresh(self) -> dict[str, Any]:
        self._snapshot = await self.spool.run(lambda s: self._outbox(s).stats())
        return self._snapshot

    # -- the capture stages ---------------------------------------------------------------

    def record(self, spool: Spool, item: Captured) -> None:
        """Store stage, on the spool thread inside the capture batch: queue the call's records."""
        try:
            self._record(spool, item)
        except Exception:
            self.stage_errors += 1
            raise

    async def after(self, items: list[Captured]) -> None:
        """After-commit stage, on the loop: refresh what status shows and wake the sender."""
        if any(item.exchange.is_llm_call for item in items):
            await self.refresh()
            self._wake.set()

    def _record(self, spool: Spool, item: Captured) -> None:
        ex = item.exchange
        if not ex.is_llm_call or item.attribution is None:
            return  # count_tokens, HEAD /, model listings: counted locally, never spans
        outbox = self._outbox(spool)
        if self.base_url is None:
            outbox.mark(ex.id, NO_DESTINATION)
            return
        sessions = self._sessions()
        info = sessions.get(ex.session_id) if sessions is not None and ex.session_id else None
        decision = self.enablement.for_session(sessions, ex.session_id)
        if not decision.enabled:
            self._debug("exchange %s: not shipped (%s)", ex.id, decision.source, force=decision.debug)
            outbox.mark(ex.id, DISABLED)
            return
        opts = self.options.get()
        if not sampled(ex.id, opts.sample_rate):
            outbox.mark(ex.id, SAMPLED_OUT)
            return
        facts = call_facts(ex, item.attribution, item.content)
        env = dict(getattr(info, "env", None) or {}) if info is not None else {}

        def resolve(own_trace_id: str) -> SessionContext:
            return self._context(facts, env, info, own_trace_id)

        result = outbox.record_call(facts, resolve, capture_content=opts.capture_content)
        self._debug(
            "exchange %s: %s (%d records, span %s, %s)", ex.id, result.state, result.records, result.span_id,
            decision.source, force=decision.debug,
        )

    def _context(self, facts: CallFacts, env: dict[str, str], info: Any, own_trace_id: str) -> SessionContext:
        ex = facts.exchange
        identity = self.identity.get().with_request(facts.account_uuid)
        parent_trace = _valid_uuid(env.get("OPIK_CC_PARENT_TRACE_ID"))
        return SessionContext(
            session_id=ex.session_id or f"exchange:{ex.id}",
            trace_id=parent_trace or own_trace_id,
            project_name=self.project_name(env, facts.account_uuid),
            identity=identity,
            parent_span_id=_valid_uuid(env.get("OPIK_CC_ROOT_SPAN_ID")) if parent_trace else None,
            own_trace=parent_trace is None,
            cwd=getattr(info, "cwd", None),
            git_repo=getattr(info, "git_repo", None),
            git_branch=getattr(info, "git_branch", None),
            source=getattr(info, "source", None),
        )

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
        except Exception as exc:  # noqa: BLE001 - recovery is best effort; shipping must still start
            log.exception("recovery scan failed")
            self.telemetry.report(exc, "shipper.recover")
        while True:
            try:
                progressed = await self._ship_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad round must not end shipping
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
                self.record(s, Captured(ex, analysis.analyze(ex, prices, content, commands), content, commands))

            try:
                await self.spool.run(derive)
            except Exception as exc:  # noqa: BLE001
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
        self._debug("%s batch of %d: %s %s", kind, len(items), result.status, result.verdict)
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
        return False if result.verdict is Verdict.BLOCKED else True

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

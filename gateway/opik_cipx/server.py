"""Gateway lifecycle: startup -> serve -> bounded graceful shutdown.

Reads top to bottom like uvicorn's: :meth:`Gateway.start` builds every part
and binds, :meth:`Gateway.serve_forever` waits for a stop flag (signal
handlers only set it), :meth:`Gateway.stop` stops accepting, lets in-flight
streams finish within a bound, drains the capture queue and closes the spool.
Tests run the real gateway in-process as an async context manager.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from .capture.pipeline import after_stages, capture_chain
from .capture.quarantine import into_spool
from .capture.sink import CaptureSink
from .capture.stages import StoreBatch, StoreStage, in_thread
from .capture.worker import WorkerProcess
from .config import Settings, ensure_home
from .ops.admin import setup_admin
from .ops.guard import guard
from .ops.metrics import Metrics, setup_metrics
from .ops.state import STATE_KEY, CaptureReport, JournalReport, WorkerReport
from .ops.upstream_health import UpstreamHealth
from .pricing import PriceTable, PricingFileError
from .proxy import journal
from .proxy.heap import IDLE_TRIM_SECONDS, give_back_freed_memory
from .proxy.recorder import Recorder
from .proxy.relay import Relay
from .proxy.routing import Upstream
from .proxy.upstream import Pool, Target
from .ship.shipper import Shipper
from .store.retention import Policy, RetentionTask
from .store.sessions import SessionStore
from .store.spool import AsyncSpool
from .viewer import setup_viewer

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, settings: Settings, *, extra_stages: list[StoreStage] | None = None) -> None:
        self.settings = settings
        self.port: int | None = None
        self.spool: AsyncSpool | None = None
        self.prices = PriceTable.builtin()
        self.pricing_error: str | None = None
        self._extra_stages = list(extra_stages or [])
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.relay: Relay | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._capture_task: asyncio.Task[None] | None = None
        self.app: web.Application | None = None  # the /_cipx routes, once started
        self._stop = asyncio.Event()
        self.capture: CaptureSink | None = None
        self._trim: asyncio.TimerHandle | None = None  # gives freed memory back after a burst
        self.metrics = Metrics()  # Prometheus counters, fed as a capture stage
        self.shipper: Shipper | None = None  # Opik spans: outbox + background shipper
        # What SessionStart hooks registered (cwd, env, git) by session id; see store/sessions.py.
        self.sessions = SessionStore()
        self.journal: journal.Journal | None = None
        self._worker: WorkerProcess | None = None
        self.started_at: float | None = None
        self.upstream = UpstreamHealth(settings.upstream_url)
        self._forwarding = False  # the proxy is relaying: background pruning waits for a lull
        self.retention: RetentionTask | None = None

    # -- startup -----------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        ensure_home(s)
        for problem in s.config_problems:
            log.warning("configuration: %s", problem)
        self._load_prices()
        self.spool = await AsyncSpool.open(s.spool_path)
        self.sessions = SessionStore(self.spool)
        await self.sessions.load()
        # The capture chain, assembled in one place (capture/pipeline.py); the worker builds
        # the same one in its own process.
        chain = capture_chain(
            s, lambda: self.prices, lambda: self.sessions, extra_stages=self._extra_stages
        )
        self.shipper = Shipper(s, self.spool, stage=chain.spans, prices=lambda: self.prices)
        journal_path = s.journal_path
        left_over = journal.take_over(journal_path)
        self.journal = journal.Journal(journal_path)
        shipper = self.shipper
        if s.capture_worker and not self._extra_stages:
            # The CPU-heavy part of capture runs in a child: it never holds this loop's GIL.
            self._worker = WorkerProcess(s, journal=self.journal)
            await self._worker.start()
            store: StoreBatch = self._worker.store
        else:
            store = in_thread(self.spool, chain.build, chain.stages, chain.committed)
        self.capture = CaptureSink(
            store,
            after_stages(self.metrics.observe, shipper),
            on_error=lambda where, exc: shipper.telemetry.report(exc, f"capture.{where}"),
            journal=self.journal,
            by_reference=self._worker is not None,
            quarantine=into_spool(self.spool, self.journal),  # a call the worker dies on
        )
        self._capture_task = asyncio.create_task(self.capture.run(), name="cipx-capture")
        self._tasks.append(self._capture_task)
        await self._replay_journal(left_over)
        await self.shipper.start()
        policy = Policy(s.retention_days, s.spool_max_mb * 1024 * 1024)
        if policy.enabled:
            # On a connection of its own, off the spool thread the shipper and status use.
            self.retention = RetentionTask(s.spool_path, policy, busy=lambda: self._forwarding)
            self._tasks.append(asyncio.create_task(self.retention.run(), name="cipx-retention"))

        # The viewer, metrics and admin API: an aiohttp app, served on connections the
        # proxy hands over when their first request is for /_cipx (see proxy/relay.py).
        app = web.Application(client_max_size=1024**3, middlewares=[guard])
        app[STATE_KEY] = self
        setup_viewer(app)
        setup_metrics(app, self.metrics)
        setup_admin(app)  # ends with its own /_cipx/* catch-all
        app.router.add_route("*", "/{tail:.*}", _misdirected)
        self.app = app
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=s.shutdown_grace)
        await self._runner.setup()
        self.relay = Relay(
            Pool(Target.parse(s.upstream_url, s.upstream_proxy)),
            self._finished,
            head_timeout=s.upstream_timeout,
            seal=self.journal.seal,
            admin=self._runner.server,
            upstreams={Upstream.OPENAI: Pool(Target.parse(s.openai_upstream_url, s.upstream_proxy)),
                       Upstream.CHATGPT: Pool(Target.parse(s.chatgpt_upstream_url, s.upstream_proxy))},
        )
        self.relay.on_busy = self._busy
        self._server = await asyncio.get_running_loop().create_server(
            self.relay.protocol, s.host, s.port, reuse_address=True
        )
        self.port = _bound_port(self._server)
        self.started_at = time.time()
        _write_private(s.port_file, f"{self.port}\n")
        log.info("opik-cipx listening on http://%s:%d -> %s", s.host, self.port, s.upstream_url)

    def _load_prices(self) -> None:
        try:
            self.prices = PriceTable.load(self.settings.pricing_file)
        except PricingFileError as exc:
            self.pricing_error = str(exc)
            log.error("ignoring pricing overrides: %s", exc)

    async def _replay_journal(self, recs: Iterator[Recorder]) -> None:
        """Capture again what a killed predecessor journaled but never stored.

        Streamed: a journal the last run could not rewind may be far larger than memory should
        hold, so calls are read, checked against the spool and handed on a group at a time,
        each group journaled anew (so the worker reads it by reference and this process lets
        go of the bytes) and waiting for room in the capture backlog rather than overflowing it.
        """
        assert self.spool is not None and self.capture is not None and self.journal is not None
        loop = asyncio.get_running_loop()
        seen = missing = 0
        while group := await loop.run_in_executor(None, _take, recs, _REPLAY_GROUP):
            ids = [r.id for r in group]
            stored = await self.spool.run(lambda sp, ids=ids: sp.existing_ids(ids))  # type: ignore[misc]
            todo = [r for r in group if r.id not in stored]
            seen, missing = seen + len(group), missing + len(todo)
            await loop.run_in_executor(None, _seal_all, self.journal, todo)
            for rec in todo:
                await self.capture.room()
                self.capture.submit(rec)
        if seen:
            log.info("journal: %d calls left by the last run, %d not yet stored", seen, missing)
        journal.finish_replay(self.journal.path)

    def _finished(self, rec: Recorder) -> None:
        """A call is over: note whether the upstream answered, then hand it to capture."""
        self.upstream.observe(rec)
        assert self.capture is not None
        self.capture.submit(rec)

    def _busy(self, busy: bool) -> None:
        """The proxy started forwarding (or went idle): capture work waits for the lulls."""
        self._forwarding = busy
        if self.capture is not None:
            self.capture.busy(busy)
        if self._worker is not None:
            self._worker.busy.set(busy)
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        if not busy:
            self._trim = asyncio.get_running_loop().call_later(IDLE_TRIM_SECONDS, give_back_freed_memory)

    # -- what the /_cipx routes read (ops.state.GatewayState) -------------------------
    def capture_report(self) -> CaptureReport | None:
        if self.capture is None:
            return None
        worker = self._worker
        return CaptureReport(
            stats=self.capture.stats,
            pending=self.capture.pending,
            running=self._capture_task is not None and not self._capture_task.done(),
            worker=None if worker is None else WorkerReport(worker.pid, worker.restarts),
            journal=None if self.journal is None else JournalReport(
                self.journal.appended, self.journal.errors, self.journal.last_error),
        )

    def shipper_status(self) -> dict[str, Any] | None:
        return None if self.shipper is None else self.shipper.status()

    def plan_windows(self) -> dict[str, Any] | None:
        if self.metrics.plan is None:
            return None
        return {**self.metrics.plan, "at": self.metrics.plan_at}

    # -- main loop -----------------------------------------------------------------
    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    # -- shutdown ------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop accepting, let in-flight calls finish within the grace period, flush captures."""
        grace = self.settings.shutdown_grace
        if self.started_at is not None:
            log.info("opik-cipx stopping (pid %d): in-flight calls get %gs to finish", os.getpid(), grace)
        if self._server is not None:
            self._server.close()  # stop accepting; connections are the relay's to end
        if self.relay is not None:
            await self.relay.shutdown(grace)
            self.relay.on_busy = None
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        if self._runner is not None:
            # Waits up to shutdown_timeout for admin handlers, then closes their connections.
            await self._runner.cleanup()
            self._runner = None
        self._server = None
        if self.capture is not None and not await self.capture.drain(timeout=grace):
            log.warning("shutdown: %d captures not yet stored", self.capture.pending)
        if self.shipper is not None:
            # Bounded: whatever Opik has not acknowledged stays in the outbox for the next start.
            await self.shipper.stop(timeout=min(grace, 5.0))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._worker is not None:
            await self._worker.stop()
            self._worker = None
        if self.journal is not None:
            # Truncates the file when every journaled call is stored; else the next start replays.
            await asyncio.get_running_loop().run_in_executor(None, self.journal.close)
            self.journal = None
        if self.spool is not None:
            await self.spool.close()
            self.spool = None
        try:
            self.settings.port_file.unlink()
        except FileNotFoundError:
            pass
        if self.started_at is not None:
            log.info("opik-cipx stopped (pid %d)", os.getpid())
            self.started_at = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"


# Calls read from a left-over journal per spool look-up.
_REPLAY_GROUP = 64


def _take(recs: Iterator[Recorder], n: int) -> list[Recorder]:
    return list(itertools.islice(recs, n))


def _seal_all(jrnl: journal.Journal, recs: list[Recorder]) -> None:
    for rec in recs:
        jrnl.seal(rec)


def _bound_port(server: asyncio.Server) -> int:
    sock: socket.socket = server.sockets[0]
    return int(sock.getsockname()[1])


async def _misdirected(request: web.Request) -> web.Response:
    # Only reachable on a connection that began with a /_cipx request: API calls need their own.
    return web.json_response(
        {"type": "error", "error": {"type": "invalid_request_error",
                                    "message": "opik-cipx: this connection serves /_cipx; "
                                               "send API calls on a new connection"}},
        status=421,
    )


def _write_private(path: os.PathLike[str] | str, text: str) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


async def run(settings: Settings, on_ready: Callable[[Settings, int], None] | None = None) -> None:
    gateway = Gateway(settings)
    await gateway.start()
    if on_ready is not None and gateway.port is not None:
        on_ready(settings, gateway.port)
    try:
        await gateway.serve_forever()
    finally:
        await gateway.stop()


def install_uvloop() -> None:
    """uvloop cuts the per-request event-loop overhead; fall back quietly without it.

    Also shortens the GIL switch interval: capture work (attribution, storage) runs on
    a thread, and with CPython's default 5 ms the event loop could wait that long for
    the GIL behind it. 0.5 ms bounds that wait; a tenth of the default costs little.
    """
    sys.setswitchinterval(0.0005)
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

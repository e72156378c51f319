"""The tee between the proxy and everything downstream.

Three parts, in the order a call meets them:

* :class:`Recorder` -- what the hot path touches: it only keeps references and
  appends ``(time, chunk)`` pairs. No parsing, no copying, nothing that can raise.
* :func:`build_exchange` / :func:`prepare` -- pure: a finished Recorder becomes
  an :class:`~opik_cipx.model.Exchange` (decode, parse usage, redact, price),
  analyzed once for every stage that needs its attribution.
* :class:`CaptureSink` -- the one error boundary. It queues finished recorders
  without blocking; a worker stores them in batches on the spool's thread, off
  the event loop. A bug in any stage is logged and counted; the proxied call
  finished long before and never sees it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import attribution_store
from .analysis import analyze
from .attribute import Attribution
from .migrations import transaction
from .model import CallKind, Exchange, Outcome, classify
from .pricing import PriceTable
from .redact import redact_headers
from .response import ResponseSummary, decode_content, read_response
from .spool import AsyncSpool, Spool

log = logging.getLogger(__name__)


class HeaderList:
    """Request headers as the proxy read them: ``items()`` in wire order, duplicates kept.

    Holds the raw bytes; decoding (latin-1, which maps bytes 1:1) waits until capture
    asks, off the hot path.
    """

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> None:
        self._items = items

    def raw(self) -> list[tuple[bytes, bytes]] | list[tuple[str, str]]:
        """The items as held: bytes as read off the wire (str only in tests and old journals)."""
        return self._items

    def items(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) if isinstance(n, bytes) else (n, v)  # type: ignore[union-attr]
                for n, v in self._items]


def _new_id() -> str:
    """A random (version 4) UUID's hex: uuid.uuid4().hex without building the UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


class Recorder:
    """Hot-path notes about one call. Methods are O(1) and cannot fail."""

    __slots__ = (
        "id", "wall_start", "t_start", "method", "path", "request_headers", "body_parts",
        "status", "response_headers", "t_head", "chunks", "times", "t_end",
        "forced_outcome", "error", "gateway_status", "frame", "journaled", "released",
    )

    def __init__(self, method: str, path: str, request_headers: Any) -> None:
        self.t_start = time.perf_counter()
        self.wall_start = time.time()
        self.id = _new_id()
        self.method = method
        self.path = path
        self.request_headers = request_headers  # a HeaderList; items() in wire order
        # The request body as read off the wire; joined only when something needs it whole.
        self.body_parts: list[bytes] = []
        self.status: int | None = None
        self.response_headers: tuple[tuple[bytes, bytes], ...] = ()
        self.t_head: float | None = None
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.t_end: float | None = None
        self.forced_outcome: Outcome | None = None
        self.error: str | None = None
        self.gateway_status: int | None = None
        # Where the journal wrote this call: (offset, length). The capture worker reads it from
        # there, so the parent never pipes the bodies a second time.
        self.frame: tuple[int, int] | None = None
        self.journaled = False  # sealed into the journal before its response completed
        self.released = False  # the bytes were dropped from memory: only the journal has them

    def response_head(self, status: int, raw_headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.t_head = time.perf_counter()
        self.status = status
        self.response_headers = raw_headers

    def chunk(self, data: bytes) -> None:
        self.chunks.append(data)
        self.times.append(time.perf_counter())

    def unreachable(self, gateway_status: int, message: str) -> None:
        self.forced_outcome = Outcome.UNREACHABLE
        self.gateway_status = gateway_status
        self.error = message

    def upstream_broke(self, message: str) -> None:
        self.forced_outcome = Outcome.TRUNCATED
        self.error = message

    def client_gone(self, message: str) -> None:
        if self.forced_outcome is None:
            self.forced_outcome = Outcome.CLIENT_GONE
            self.error = message

    def finish(self) -> None:
        if self.t_end is None:
            self.t_end = time.perf_counter()

    def release(self) -> None:
        """Drop the bytes: the journal holds them (``frame``) and capture reads them from there."""
        self.body_parts = []
        self.chunks = []
        self.released = True

    @property
    def body(self) -> bytes:
        parts = self.body_parts
        if len(parts) == 1:
            return parts[0]
        joined = b"".join(parts)
        self.body_parts = [joined]
        return joined

    @body.setter
    def body(self, value: bytes) -> None:
        self.body_parts = [value]

    @property
    def size(self) -> int:
        """Bytes this recorder keeps alive: the request body and the response chunks."""
        return sum(map(len, self.body_parts)) + sum(map(len, self.chunks))


_USER_ID = re.compile(rb'"user_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_OLD_SESSION = re.compile(r"session_([0-9a-fA-F-]{36})")
_SPEED = re.compile(rb'"speed"\s*:\s*"(\w+)"')


def _json_string(raw: bytes) -> str | None:
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def session_from_body(body: bytes) -> str | None:
    """``metadata.user_id``'s session: a JSON string today, ``user_.._session_<uuid>`` before."""
    match = _USER_ID.search(body)
    if match is None:
        return None
    user_id = _json_string(match.group(1))
    if not user_id:
        return None
    try:
        parsed = json.loads(user_id)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str):
        return parsed["session_id"] or None
    old = _OLD_SESSION.search(user_id)
    return old.group(1) if old else None


def model_from_body(body: bytes) -> str | None:
    # Claude Code puts "model" first; any "model" inside messages comes later in the body.
    match = _MODEL.search(body)
    return _json_string(match.group(1)) if match else None


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000.0, 3)


def build_exchange(rec: Recorder, prices: PriceTable | None) -> Exchange:
    """Turn a finished Recorder into an Exchange. Pure: no clock, no I/O."""
    return _build(rec, prices)[0]


def _build(rec: Recorder, prices: PriceTable | None) -> tuple[Exchange, ResponseSummary | None]:
    kind = classify(rec.method, rec.path)
    request_headers = redact_headers(rec.request_headers.items())
    response_headers = redact_headers(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in rec.response_headers
    )
    encoding = response_headers.get("content-encoding")
    content_type = response_headers.get("content-type", "").strip().lower()
    raw_size = sum(len(c) for c in rec.chunks)
    decoded, decode_error = decode_content(encoding, rec.chunks)

    summary: ResponseSummary | None = None
    # Only /v1/messages bodies are messages; count_tokens answers {"input_tokens": N}.
    if rec.status is not None and decoded and kind is CallKind.MESSAGES:
        summary = read_response(rec.status, content_type, zip(rec.times, decoded))

    ex = Exchange(
        id=rec.id,
        started_at=rec.wall_start,
        method=rec.method,
        path=rec.path,
        kind=kind,
        request_headers=request_headers,
        request_body=rec.body,
        status=rec.status,
        response_headers=response_headers,
        response_body=b"".join(decoded),
        response_encoding=encoding,
        streamed=content_type.startswith("text/event-stream"),
        ttfb_ms=_ms(rec.t_head, rec.t_start),
        duration_ms=_ms(rec.t_end, rec.t_start),
        session_id=request_headers.get("x-claude-code-session-id") or session_from_body(rec.body),
        agent_id=request_headers.get("x-claude-code-agent-id"),
        model=model_from_body(rec.body) if kind is not CallKind.OTHER else None,
        request_bytes=len(rec.body),
        response_bytes=raw_size,
    )
    if summary is not None:
        ex.model = summary.model or ex.model
        ex.stop_reason = summary.stop_reason
        ex.usage = summary.usage
        ex.outcome = summary.outcome
        ex.error = summary.error
        ex.ttft_ms = _ms(summary.first_token_at, rec.t_start)
    elif rec.status is not None and rec.status >= 400:
        ex.outcome = Outcome.HTTP_ERROR
        ex.error = f"HTTP {rec.status}"
    if decode_error and ex.outcome is Outcome.COMPLETE and kind is CallKind.MESSAGES:
        ex.outcome = Outcome.UNPARSEABLE
        ex.error = decode_error
    if rec.forced_outcome is not None:
        # The wire's verdict (unreachable, cut off, client gone) outranks what the bytes suggest.
        ex.outcome = rec.forced_outcome
        ex.error = rec.error if not ex.error else f"{rec.error}; {ex.error}"
    if ex.usage is not None and ex.usage.speed is None:
        speed = _SPEED.search(rec.body)
        if speed is not None:
            ex.usage.speed = speed.group(1).decode("ascii", "replace")
    if kind is CallKind.MESSAGES and ex.usage is not None and prices is not None:
        ex.cost = prices.price(ex.model, ex.usage, at=ex.started_at)
    return ex, summary


@dataclass(slots=True)
class Captured:
    """One finished call as the stages see it: the Exchange and, for LLM calls, its analysis."""

    exchange: Exchange
    attribution: Attribution | None = None
    content: list[dict[str, Any]] = field(default_factory=list)  # the response's content blocks
    commands: tuple[str, ...] = ()  # the session's custom slash commands attribution used


def prepare(
    rec: Recorder,
    prices: PriceTable | None,
    commands_for: Callable[[str | None], tuple[str, ...]] | None = None,
) -> Captured:
    """Build the Exchange and, for LLM calls, attribute it once for every stage that needs it.

    ``commands_for`` maps a session id to its custom slash command names.
    """
    ex, summary = _build(rec, prices)
    if not ex.is_llm_call:
        return Captured(ex)
    content = summary.content if summary is not None else []
    commands = commands_for(ex.session_id) if commands_for is not None else ()
    return Captured(ex, analyze(ex, prices, content, commands), content, commands)


# Runs on the spool thread inside the batch's transaction (each in its own savepoint).
StoreStage = Callable[[Spool, Captured], None]


def store_exchange(sp: Spool, item: Captured) -> None:
    """The first store stage: the Exchange itself. Nothing else is kept if this fails."""
    sp.add(item.exchange)


def store_attribution(sp: Spool, item: Captured) -> None:
    if item.attribution is not None:
        attribution_store.save(sp.conn, item.exchange.id, item.attribution, item.commands)


# Runs on the event loop once a batch is committed, with what it stored: counters, wake-ups.
AfterStage = Callable[[list[Captured]], Awaitable[None]]


Failure = tuple[str, BaseException]


def store_batch(
    sp: Spool,
    batch: list[Recorder],
    build: Callable[[Recorder], Captured],
    stages: list[StoreStage],
    failures: list[Failure],
) -> list[Captured]:
    """Build, analyze and store a batch in one transaction; the calls stored, in order.

    Runs wherever the spool is written from: the spool thread, or the capture
    worker process. Each stage runs in its own savepoint, so a failing stage
    undoes only itself; if the first (the Exchange) fails nothing hangs off it.
    """
    done: list[Captured] = []
    with transaction(sp.conn):
        for rec in batch:
            try:
                item = build(rec)
            except Exception as exc:  # noqa: BLE001
                failures.append(("build", exc))
                continue
            stored = True
            for i, stage in enumerate(stages):
                try:
                    with transaction(sp.conn):
                        stage(sp, item)
                except Exception as exc:  # noqa: BLE001
                    failures.append((_name(stage), exc))
                    if i == 0:
                        stored = False
                        break
            if stored:
                done.append(item)
    return done


# A finished call waits at most this long (from its end) for the proxy to go quiet before
# capture starts on it: under steady traffic every call is still captured within seconds.
MAX_DEFER = 3.0

# Stores a batch somewhere off the event loop; returns what was stored and what failed.
StoreBatch = Callable[[list[Recorder]], Awaitable[tuple[list[Captured], list[Failure]]]]


def in_thread(spool: AsyncSpool, build: Callable[[Recorder], Captured], stages: list[StoreStage]) -> StoreBatch:
    """A StoreBatch on the spool's thread, in this process."""

    async def store(batch: list[Recorder]) -> tuple[list[Captured], list[Failure]]:
        failures: list[Failure] = []
        done = await spool.run(lambda sp: store_batch(sp, batch, build, stages, failures))
        return done, failures

    return store


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
        on_error: Callable[[str, BaseException], None] | None = None,
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
        except Exception:  # noqa: BLE001 - nothing may escape into the proxy
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
                failures.append((_name(stage), exc))
        for where, exc in failures:
            self._fail(where, exc)

    def _fail(self, where: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{where}: {type(exc).__name__}: {exc}"
        log.error("capture stage %s failed", where, exc_info=exc)
        if self._on_error is not None:
            try:
                self._on_error(where, exc)
            except Exception:  # noqa: BLE001 - error reporting must not fail the worker
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


def _name(stage: object) -> str:
    return getattr(stage, "__qualname__", None) or repr(stage)

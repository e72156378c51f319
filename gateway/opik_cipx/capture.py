"""The tee between the proxy and everything downstream.

Three parts, in the order a call meets them:

* :class:`Recorder` -- what the hot path touches: it only keeps references and
  appends ``(time, chunk)`` pairs. No parsing, no copying, nothing that can raise.
* :func:`build_exchange` -- pure: a finished Recorder becomes an
  :class:`~opik_cipx.model.Exchange` (decode, parse usage, redact, price).
* :class:`CaptureSink` -- the one error boundary. It queues finished recorders
  without blocking, and a worker runs the build and the downstream stages off
  the event loop. A bug in any stage is logged and counted; the proxied call
  finished long before and never sees it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .model import CallKind, Exchange, Outcome, classify
from .pricing import PriceTable
from .redact import redact_headers
from .response import ResponseSummary, decode_content, read_response

log = logging.getLogger(__name__)


class Recorder:
    """Hot-path notes about one call. Methods are O(1) and cannot fail."""

    __slots__ = (
        "id", "wall_start", "t_start", "method", "path", "request_headers", "body",
        "status", "response_headers", "t_head", "chunks", "times", "t_end",
        "forced_outcome", "error", "gateway_status",
    )

    def __init__(self, method: str, path: str, request_headers: Any) -> None:
        self.t_start = time.perf_counter()
        self.wall_start = time.time()
        self.id = uuid.uuid4().hex
        self.method = method
        self.path = path
        self.request_headers = request_headers  # immutable CIMultiDictProxy: safe to keep
        self.body = b""
        self.status: int | None = None
        self.response_headers: tuple[tuple[bytes, bytes], ...] = ()
        self.t_head: float | None = None
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.t_end: float | None = None
        self.forced_outcome: Outcome | None = None
        self.error: str | None = None
        self.gateway_status: int | None = None

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
    """Turn a finished Recorder into an Exchange. Pure apart from reading the clock-free recorder."""
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
    return ex


Stage = Callable[[Exchange], Awaitable[None]]


@dataclass
class CaptureStats:
    submitted: int = 0
    captured: int = 0
    dropped: int = 0  # queue full: the gateway chose the user's latency over a capture
    errors: int = 0  # a stage raised; the call itself was already done
    last_error: str | None = None
    by_kind: dict[str, int] = field(default_factory=dict)


class CaptureSink:
    """Queue plus worker: the single place capture errors are contained."""

    def __init__(
        self,
        build: Callable[[Recorder], Awaitable[Exchange]],
        stages: list[Stage],
        *,
        max_pending: int = 10_000,
    ) -> None:
        self._build = build
        self._stages = stages
        self._queue: asyncio.Queue[Recorder] = asyncio.Queue(max_pending)
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = CaptureStats()

    def submit(self, rec: Recorder) -> None:
        """Called from the hot path: never blocks, never raises."""
        try:
            self._queue.put_nowait(rec)
            self._idle.clear()
            self.stats.submitted += 1
        except asyncio.QueueFull:
            self.stats.dropped += 1
        except Exception:  # noqa: BLE001 - nothing may escape into the proxy
            self.stats.dropped += 1
            log.exception("capture submit failed")

    async def run(self) -> None:
        while True:
            rec = await self._queue.get()
            try:
                await self._process(rec)
            finally:
                self._queue.task_done()
                if self._queue.empty():
                    self._idle.set()

    async def _process(self, rec: Recorder) -> None:
        try:
            ex = await self._build(rec)
        except Exception as exc:  # noqa: BLE001
            self._fail("build", exc)
            return
        self.stats.captured += 1
        self.stats.by_kind[ex.kind.value] = self.stats.by_kind.get(ex.kind.value, 0) + 1
        for stage in self._stages:
            try:
                await stage(ex)
            except Exception as exc:  # noqa: BLE001
                self._fail(getattr(stage, "__qualname__", repr(stage)), exc)

    def _fail(self, where: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{where}: {type(exc).__name__}: {exc}"
        log.error("capture stage %s failed", where, exc_info=exc)

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

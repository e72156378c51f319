"""A local fake of the Anthropic Messages API that speaks the real wire format.

Used in-process (``async with FakeAnthropic(script) as fake``) by tests that point the
``anthropic`` SDK or the gateway at it, and standalone (``python -m tests.support.fake_anthropic``)
inside a network namespace next to the real Claude Code CLI, where it records every request to a
directory because the test process cannot see its memory.

Every answer is a pure function of the request bytes and the scripted :class:`Turn`, except the
ids, which count up per server, so tests can compute expected usage with :func:`usage_for` and
compare the response bytes the gateway relays with :attr:`FakeAnthropic.sent`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gzip as gzip_module
import hashlib
import importlib
import json
import signal
import socket
import ssl
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

DEFAULT_MODEL = "claude-sonnet-4-5-20250929"

# Real API error types by status; anything else maps to api_error.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

# Text is streamed in pieces this long so that parsers see many deltas, as with real tokens.
_TEXT_CHUNK = 24
_JSON_CHUNK = 16


@dataclass
class Turn:
    """One scripted response to one ``POST /v1/messages``."""

    text: str = "ok"
    thinking: str | None = None
    tool_uses: Sequence[tuple[str, dict[str, Any]]] = ()
    status: int = 200
    error_event_after: int | None = None
    reset_after_events: int | None = None
    first_byte_delay: float = 0.0
    event_delay: float = 0.0
    gzip: bool = False
    usage: dict[str, Any] | None = None
    model: str | None = None
    retry_after: float | None = None  # 429/529 only; None means "1" for 429 and no header for 529
    error_type: str | None = None  # override of the error type for status != 200 or error events
    # Events the API may add one day, sent right after message_start: [(event name, data)].
    extra_events: Sequence[tuple[str, dict[str, Any]]] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Turn:
        """Build a Turn from JSON (tool_uses as ``[[name, input], ...]``); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Turn fields: {sorted(unknown)}")
        values = dict(data)
        for key in ("tool_uses", "extra_events"):
            if key in values:
                values[key] = [(str(name), dict(inp)) for name, inp in values[key]]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tool_uses"] = [[name, inp] for name, inp in self.tool_uses]
        data["extra_events"] = [[name, inp] for name, inp in self.extra_events]
        return data


@dataclass
class RecordedRequest:
    """A request exactly as the server received it, and what was written back."""

    method: str
    path: str  # path with query string, e.g. "/v1/messages?beta=true"
    headers: CIMultiDict[str]
    body: bytes
    index: int = 0
    status: int = 0
    response_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    response_body: bytearray = field(default_factory=bytearray)  # wire bytes (gzip if encoded)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]


Script = Sequence[Turn] | Callable[[RecordedRequest], Turn] | None


# --------------------------------------------------------------------------- usage


def usage_for(body: bytes) -> dict[str, Any]:
    """Deterministic input usage for a request body.

    About four bytes per token, split so that every cache field is non-zero on any real request:
    half cache read, three tenths cache write (one third of it 1h, the rest 5m), the rest uncached.
    """
    total = max(1, len(body) // 4)
    cache_read = total * 5 // 10
    cache_creation = total * 3 // 10
    one_hour = cache_creation // 3
    return {
        "input_tokens": total - cache_read - cache_creation,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_creation - one_hour,
            "ephemeral_1h_input_tokens": one_hour,
        },
        "output_tokens": 0,
        "service_tier": "standard",
    }


def output_tokens_for(turn: Turn) -> int:
    size = len(turn.text) + len(turn.thinking or "")
    size += sum(len(json.dumps(inp)) + len(name) for name, inp in turn.tool_uses)
    return max(1, size // 4)


def count_tokens_for(body: bytes) -> int:
    return max(1, len(body) // 4)


# --------------------------------------------------------------------------- wire format


def sse_event(name: str, data: Mapping[str, Any]) -> bytes:
    """One SSE event as the API frames it: ``event: X\\ndata: {json}\\n\\n``."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _chunks(text: str, size: int) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


def _stable_id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24]
    return f"{prefix}{digest}"


@dataclass
class _Block:
    kind: str  # "thinking" | "text" | "tool_use"
    value: str | dict[str, Any]
    name: str = ""
    id: str = ""


def _blocks(turn: Turn, request_index: int) -> list[_Block]:
    blocks: list[_Block] = []
    if turn.thinking is not None:
        blocks.append(_Block("thinking", turn.thinking))
    if turn.text or not turn.tool_uses:
        blocks.append(_Block("text", turn.text))
    for n, (name, inp) in enumerate(turn.tool_uses):
        blocks.append(_Block("tool_use", inp, name=name, id=_stable_id("toolu_01", request_index, n)))
    return blocks


def _signature(thinking: str) -> str:
    return hashlib.sha256(thinking.encode()).hexdigest()


def _final_usage(turn: Turn, body: bytes) -> dict[str, Any]:
    usage = usage_for(body)
    usage["output_tokens"] = output_tokens_for(turn)
    if turn.usage:
        usage.update(turn.usage)
    return usage


def _model(turn: Turn, request_json: Any) -> str:
    if turn.model:
        return turn.model
    if isinstance(request_json, dict) and isinstance(request_json.get("model"), str):
        return request_json["model"]
    return DEFAULT_MODEL


def _stop_reason(turn: Turn) -> str:
    return "tool_use" if turn.tool_uses else "end_turn"


def stream_events(turn: Turn, body: bytes, request_json: Any, *, message_id: str, request_index: int) -> list[bytes]:
    """The SSE events for a successful streamed turn, in the order the API sends them."""
    usage = _final_usage(turn, body)
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": _model(turn, request_json),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events = [sse_event("message_start", {"type": "message_start", "message": message})]
    events += [sse_event(name, data) for name, data in turn.extra_events]
    for index, block in enumerate(_blocks(turn, request_index)):
        if block.kind == "thinking":
            start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        elif block.kind == "text":
            start = {"type": "text", "text": ""}
        else:
            start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        events.append(sse_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        if index == 0:
            # The API pings right after the first block opens.
            events.append(sse_event("ping", {"type": "ping"}))
        deltas: list[dict[str, Any]] = []
        if block.kind == "thinking":
            assert isinstance(block.value, str)
            deltas += [{"type": "thinking_delta", "thinking": piece} for piece in _chunks(block.value, _TEXT_CHUNK)]
            deltas.append({"type": "signature_delta", "signature": _signature(block.value)})
        elif block.kind == "text":
            assert isinstance(block.value, str)
            deltas += [{"type": "text_delta", "text": piece} for piece in _chunks(block.value, _TEXT_CHUNK)]
        else:
            raw = json.dumps(block.value, separators=(",", ":"))
            deltas.append({"type": "input_json_delta", "partial_json": ""})
            deltas += [{"type": "input_json_delta", "partial_json": piece} for piece in _chunks(raw, _JSON_CHUNK)]
        for delta in deltas:
            events.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta_usage = {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")}
    events.append(
        sse_event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": _stop_reason(turn), "stop_sequence": None}, "usage": delta_usage},
        )
    )
    events.append(sse_event("message_stop", {"type": "message_stop"}))
    return events


def message_json(turn: Turn, body: bytes, request_json: Any, *, message_id: str, request_index: int) -> dict[str, Any]:
    """The non-streaming response body for a successful turn."""
    content: list[dict[str, Any]] = []
    for block in _blocks(turn, request_index):
        if block.kind == "thinking":
            assert isinstance(block.value, str)
            content.append({"type": "thinking", "thinking": block.value, "signature": _signature(block.value)})
        elif block.kind == "text":
            content.append({"type": "text", "text": block.value})
        else:
            content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.value})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": _model(turn, request_json),
        "content": content,
        "stop_reason": _stop_reason(turn),
        "stop_sequence": None,
        "usage": _final_usage(turn, body),
    }


def error_body(status: int, request_id: str, error_type: str | None = None) -> dict[str, Any]:
    kind = error_type or _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": f"fake {kind} ({status})"}, "request_id": request_id}


# --------------------------------------------------------------------------- server


class FakeAnthropic:
    """An aiohttp server on 127.0.0.1 that answers like api.anthropic.com.

    ``script`` is a list of turns consumed in order by ``POST /v1/messages`` (a default ``Turn()``
    once it runs out), or a callable that picks a turn for each request.
    """

    def __init__(self, script: Script = None, *, port: int = 0, record_dir: Path | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._script = script
        self._ssl = ssl_context  # serve https (tests of the gateway's TLS leg)
        self._queue: list[Turn] = list(script) if isinstance(script, Sequence) else []
        self._port = port
        self._record_dir = record_dir
        self.extra_headers: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._messages_seen = 0
        self.url = ""
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0  # streams whose client went away before the end

    @property
    def script(self) -> Script:
        return self._script

    @script.setter
    def script(self, script: Script) -> None:
        """Replace the script between requests (tests set it after the fixture started us)."""
        self._script = script
        self._queue = list(script) if isinstance(script, Sequence) else []

    @property
    def sent(self) -> list[bytes]:
        """Response body bytes as written on the wire, one entry per request in :attr:`requests`."""
        return [bytes(r.response_body) for r in self.requests]

    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.route == "/v1/messages"]

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False keeps request bodies byte-exact even if a client compresses them.
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, ssl_context=self._ssl)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- dispatch

    def _next_turn(self, recorded: RecordedRequest) -> Turn:
        if callable(self._script):
            return self._script(recorded)
        if self._queue:
            return self._queue.pop(0)
        return Turn()

    def _base_headers(self, request_id: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers["request-id"] = request_id
        headers["anthropic-organization-id"] = "00000000-0000-4000-8000-000000000000"
        for kind, limit in (("requests", 4000), ("tokens", 2_000_000), ("input-tokens", 2_000_000), ("output-tokens", 400_000)):
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(limit - 1)
            headers[f"anthropic-ratelimit-{kind}-reset"] = "2030-01-01T00:00:00Z"
        # E.g. the anthropic-ratelimit-unified-* plan windows a subscription login gets.
        for name, value in self.extra_headers.items():
            headers[name] = value
        return headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        recorded = RecordedRequest(
            method=request.method,
            path=request.path_qs,
            headers=CIMultiDict(request.headers),
            body=body,
            index=len(self.requests),
        )
        self.requests.append(recorded)
        request_id = _stable_id("req_011", recorded.index)
        try:
            if request.method in ("HEAD", "GET") and request.path == "/":
                return await self._respond_json(request, recorded, 200, {}, request_id)
            if request.method == "POST" and request.path == "/v1/messages/count_tokens":
                return await self._respond_json(request, recorded, 200, {"input_tokens": count_tokens_for(body)}, request_id)
            if request.method == "POST" and request.path == "/v1/messages":
                return await self._messages(request, recorded, request_id)
            return await self._respond_json(request, recorded, 404, error_body(404, request_id), request_id)
        finally:
            if self._record_dir is not None:
                # File writes stay off the event loop (the suite may run blockbuster).
                await asyncio.to_thread(self._write_record, recorded)

    async def _messages(self, request: web.Request, recorded: RecordedRequest, request_id: str) -> web.StreamResponse:
        try:
            request_json: Any = json.loads(recorded.body)
        except (ValueError, RecursionError):
            request_json = None
        if not isinstance(request_json, dict):
            return await self._respond_json(request, recorded, 400, error_body(400, request_id), request_id)
        turn = self._next_turn(recorded)
        self._messages_seen += 1
        message_id = _stable_id("msg_01", recorded.index)
        if turn.first_byte_delay:
            await asyncio.sleep(turn.first_byte_delay)
        if turn.status != 200:
            extra: dict[str, str] = {}
            retry_after = turn.retry_after if turn.retry_after is not None else (1 if turn.status == 429 else None)
            if retry_after is not None:
                extra["retry-after"] = f"{retry_after:g}"
            if turn.status == 529:
                extra["x-should-retry"] = "true"
            return await self._respond_json(
                request, recorded, turn.status, error_body(turn.status, request_id, turn.error_type), request_id, extra, turn.gzip
            )
        if not request_json.get("stream"):
            payload = message_json(turn, recorded.body, request_json, message_id=message_id, request_index=recorded.index)
            return await self._respond_json(request, recorded, 200, payload, request_id, gzip=turn.gzip)
        return await self._stream(request, recorded, turn, request_json, message_id, request_id)

    async def _respond_json(
        self,
        request: web.Request,
        recorded: RecordedRequest,
        status: int,
        payload: Mapping[str, Any],
        request_id: str,
        extra: Mapping[str, str] | None = None,
        gzip: bool = False,
    ) -> web.Response:
        headers = self._base_headers(request_id)
        headers["content-type"] = "application/json"
        headers.update(extra or {})
        data = json.dumps(payload, separators=(",", ":")).encode()
        if gzip:
            data = gzip_module.compress(data, mtime=0)
            headers["content-encoding"] = "gzip"
        if request.method == "HEAD":
            data = b""
        recorded.status = status
        recorded.response_headers = CIMultiDict(headers)
        recorded.response_body += data
        return web.Response(status=status, body=data, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        recorded: RecordedRequest,
        turn: Turn,
        request_json: dict[str, Any],
        message_id: str,
        request_id: str,
    ) -> web.StreamResponse:
        headers = self._base_headers(request_id)
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        compressor = None
        if turn.gzip:
            headers["content-encoding"] = "gzip"
            compressor = zlib.compressobj(wbits=31)
        response = web.StreamResponse(status=200, headers=headers)
        recorded.status = 200
        recorded.response_headers = CIMultiDict(headers)
        await response.prepare(request)

        async def write(data: bytes) -> None:
            if compressor is not None:
                # A sync flush per event keeps the stream incremental for the client.
                data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            recorded.response_body += data
            await response.write(data)

        events = stream_events(turn, recorded.body, request_json, message_id=message_id, request_index=recorded.index)
        try:
            for written, event in enumerate(events):
                if turn.reset_after_events is not None and written >= turn.reset_after_events:
                    await self._reset(request)
                    return response
                if turn.error_event_after is not None and written >= turn.error_event_after:
                    kind = turn.error_type or "overloaded_error"
                    await write(sse_event("error", {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}))
                    break
                if written and turn.event_delay:
                    await asyncio.sleep(turn.event_delay)
                await write(event)
            if compressor is not None:
                tail = compressor.flush()
                recorded.response_body += tail
                await response.write(tail)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            # The client went away mid-stream; what was written is already recorded.
            self.disconnects += 1
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        return response

    async def _reset(self, request: web.Request) -> None:
        transport = request.transport
        if transport is None:
            return
        # Give the client a moment to read what was sent, then abort with an RST so it sees a
        # genuine reset rather than a clean close.
        await asyncio.sleep(0.05)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()

    # -- recording for the standalone mode

    def _write_record(self, recorded: RecordedRequest) -> None:
        if self._record_dir is None:
            return
        stem = self._record_dir / f"{recorded.index:04d}"
        stem.with_suffix(".body").write_bytes(recorded.body)
        stem.with_suffix(".response").write_bytes(bytes(recorded.response_body))
        meta = {
            "index": recorded.index,
            "method": recorded.method,
            "path": recorded.path,
            "headers": [[k, v] for k, v in recorded.headers.items()],
            "status": recorded.status,
            "response_headers": [[k, v] for k, v in recorded.response_headers.items()],
        }
        # Written last and atomically: a reader that sees the .json sees the whole record.
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(stem.with_suffix(".json"))


def load_records(record_dir: Path) -> list[RecordedRequest]:
    """Read back what a standalone server recorded with ``--record-dir``, in arrival order."""
    records: list[RecordedRequest] = []
    for meta_path in sorted(record_dir.glob("[0-9]*.json")):
        meta = json.loads(meta_path.read_text())
        stem = meta_path.with_suffix("")
        records.append(
            RecordedRequest(
                method=meta["method"],
                path=meta["path"],
                headers=CIMultiDict((k, v) for k, v in meta["headers"]),
                body=stem.with_suffix(".body").read_bytes(),
                index=meta["index"],
                status=meta["status"],
                response_headers=CIMultiDict((k, v) for k, v in meta["response_headers"]),
                response_body=bytearray(stem.with_suffix(".response").read_bytes()),
            )
        )
    return records


# --------------------------------------------------------------------------- rules


def _text_of(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _last_user_message(request_json: Mapping[str, Any]) -> Any:
    for message in reversed(request_json.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


def _tool_results(request_json: Mapping[str, Any]) -> int:
    count = 0
    for message in request_json.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            count += sum(1 for block in content if isinstance(block, dict) and block.get("type") == "tool_result")
    return count


_CONDITIONS = {
    "body_contains",
    "body_lacks",
    "last_user_contains",
    "last_user_lacks",
    "system_contains",
    "model_contains",
    "has_header",
    "lacks_header",
    "tool_results",
    "has_tools",
}


@dataclass
class Rule:
    """A turn chosen when every given condition holds (an empty ``when`` always matches).

    Conditions: ``body_contains``/``body_lacks`` (substring of the raw body),
    ``last_user_contains``/``last_user_lacks`` (substring of the last user message as JSON),
    ``system_contains``, ``model_contains``, ``has_header``/``lacks_header`` (header name),
    ``tool_results`` (exact number of tool_result blocks in the conversation), ``has_tools``
    (whether the request offers any tools). ``times`` limits how often a rule fires.
    """

    turn: Turn
    when: dict[str, Any] = field(default_factory=dict)
    times: int | None = None
    fired: int = 0

    def matches(self, request: RecordedRequest, request_json: Mapping[str, Any]) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        for key, expected in self.when.items():
            if key == "body_contains" and expected.encode() not in request.body:
                return False
            if key == "body_lacks" and expected.encode() in request.body:
                return False
            if key == "last_user_contains" and expected not in _text_of(_last_user_message(request_json)):
                return False
            if key == "last_user_lacks" and expected in _text_of(_last_user_message(request_json)):
                return False
            if key == "system_contains" and expected not in _text_of(request_json.get("system", "")):
                return False
            if key == "model_contains" and expected not in str(request_json.get("model", "")):
                return False
            if key == "has_header" and expected not in request.headers:
                return False
            if key == "lacks_header" and expected in request.headers:
                return False
            if key == "tool_results" and _tool_results(request_json) != expected:
                return False
            if key == "has_tools" and bool(request_json.get("tools")) != bool(expected):
                return False
        return True


class Rules:
    """A callable script: the first matching rule's turn, else ``default``."""

    def __init__(self, rules: Sequence[Rule], default: Turn | None = None) -> None:
        self.rules = list(rules)
        self.default = default or Turn()

    def __call__(self, request: RecordedRequest) -> Turn:
        try:
            request_json = json.loads(request.body)
        except (ValueError, RecursionError):
            request_json = {}
        if not isinstance(request_json, dict):
            request_json = {}
        for rule in self.rules:
            if rule.matches(request, request_json):
                rule.fired += 1
                return rule.turn
        return self.default

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rules:
        rules = []
        for item in data.get("rules", []):
            unknown = set(item.get("when", {})) - _CONDITIONS
            if unknown:
                raise ValueError(f"unknown rule conditions: {sorted(unknown)}")
            rules.append(Rule(turn=Turn.from_dict(item.get("turn", {})), when=dict(item.get("when", {})), times=item.get("times")))
        default = Turn.from_dict(data["default"]) if "default" in data else None
        return cls(rules, default)

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": [
                {"when": rule.when, "turn": rule.turn.to_dict(), **({"times": rule.times} if rule.times is not None else {})}
                for rule in self.rules
            ],
            "default": self.default.to_dict(),
        }


def load_script(path: Path) -> Script:
    """A script file: a JSON list of Turn dicts, or ``{"rules": [...], "default": {...}}``."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return [Turn.from_dict(item) for item in data]
    if isinstance(data, dict) and "rules" in data:
        return Rules.from_json(data)
    raise ValueError(f"{path}: expected a list of turns or an object with 'rules'")


def _load_factory(spec: str) -> Script:
    """``module:attr`` names a zero-argument factory, so each server run gets fresh script state."""
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory()


# --------------------------------------------------------------------------- CLI


async def _serve(args: argparse.Namespace) -> None:
    script: Script = None
    if args.script:
        script = load_script(Path(args.script))
    elif args.script_factory:
        script = _load_factory(args.script_factory)
    record_dir = Path(args.record_dir) if args.record_dir else None
    if record_dir is not None:
        record_dir.mkdir(parents=True, exist_ok=True)
    fake = FakeAnthropic(script, port=args.port, record_dir=record_dir)
    fake.extra_headers = dict(h.split("=", 1) for h in args.header or [])
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.port_file:
        port_file = Path(args.port_file)
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{fake.port}\n")
        tmp.replace(port_file)
    print(f"fake_anthropic listening on {fake.url}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_anthropic", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--script", help="JSON: a list of Turn dicts, or {'rules': [...], 'default': {...}}")
    group.add_argument("--script-factory", help="module:attr of a zero-argument function returning a script")
    parser.add_argument("--record-dir", help="write each request/response here as NNNN.{json,body,response}")
    parser.add_argument("--header", action="append", metavar="NAME=VALUE", help="an extra header on every answer")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

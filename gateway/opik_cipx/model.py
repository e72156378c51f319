"""The one data type that flows proxy -> capture -> attribute -> spool -> ship.

An :class:`Exchange` is one request/response pair as seen on the wire. Every
stage after the proxy is a function of it or a sink for it; the Opik JSON, the
viewer rows and the stats are projections of it made at their own edges.
Pure data: no I/O, no aiohttp, JSON round-trip via ``to_dict``/``from_dict``.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class CallKind(StrEnum):
    """What the request was, decided from method and path alone."""

    MESSAGES = "messages"  # POST /v1/messages: an LLM call
    COUNT_TOKENS = "count_tokens"  # POST /v1/messages/count_tokens: counted, not an LLM call
    RESPONSES = "responses"  # OpenAI Responses: POST /v1/responses, or one turn on its WebSocket
    OTHER = "other"  # HEAD /, model listing, anything else: forwarded and counted


class Outcome(StrEnum):
    """How the exchange ended, from the gateway's point of view."""

    COMPLETE = "complete"  # a full, parseable response arrived
    HTTP_ERROR = "http_error"  # upstream answered with status >= 400
    STREAM_ERROR = "stream_error"  # an SSE `error` event arrived mid-stream
    TRUNCATED = "truncated"  # the stream ended before `message_stop`
    UNPARSEABLE = "unparseable"  # 2xx body we could not read as JSON/SSE
    UNREACHABLE = "unreachable"  # no response: the gateway answered 502/504 itself
    CLIENT_GONE = "client_gone"  # the client disconnected before the end


@dataclass(slots=True)
class Usage:
    """Exact token counts as the API billed them.

    ``raw`` keeps the merged original object (``message_start`` usage updated
    by the last cumulative ``message_delta`` usage) so no field the API adds
    later is lost.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # The TTL split of cache_creation_input_tokens; None when the API did not send it.
    cache_creation_5m: int | None = None
    cache_creation_1h: int | None = None
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None  # "fast" for fast mode
    raw: dict[str, Any] = field(default_factory=dict)
    # OpenAI's output_tokens_details.reasoning_tokens: a part of output_tokens, not added to it.
    reasoning_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Billed prompt tokens: input + cache writes + cache reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Usage:
        """Build from an Anthropic ``usage`` object, tolerating missing or odd fields."""

        def as_int(value: Any) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        def opt_int(value: Any) -> int | None:
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

        def opt_str(value: Any) -> str | None:
            return value if isinstance(value, str) else None

        split = raw.get("cache_creation")
        split = split if isinstance(split, dict) else {}
        server = raw.get("server_tool_use")
        server = server if isinstance(server, dict) else {}
        return cls(
            input_tokens=as_int(raw.get("input_tokens")),
            output_tokens=as_int(raw.get("output_tokens")),
            cache_creation_input_tokens=as_int(raw.get("cache_creation_input_tokens")),
            cache_read_input_tokens=as_int(raw.get("cache_read_input_tokens")),
            cache_creation_5m=opt_int(split.get("ephemeral_5m_input_tokens")),
            cache_creation_1h=opt_int(split.get("ephemeral_1h_input_tokens")),
            web_search_requests=as_int(server.get("web_search_requests")),
            web_fetch_requests=as_int(server.get("web_fetch_requests")),
            service_tier=opt_str(raw.get("service_tier")),
            inference_geo=opt_str(raw.get("inference_geo")),
            speed=opt_str(raw.get("speed")),
            raw=dict(raw),
        )


@dataclass(slots=True)
class Cost:
    """A priced usage. ``total_usd`` is None when the model is unknown: never $0."""

    total_usd: float | None
    # Component costs: input, cache_write_5m, cache_write_1h, cache_read, output, web_search.
    parts: dict[str, float] = field(default_factory=dict)
    price_key: str | None = None  # the price-table prefix that matched
    effective_date: str | None = None  # the dated row used
    multiplier: float = 1.0  # fast mode x inference geo
    long_context: bool = False
    note: str | None = None  # why unknown, or which override applied

    @property
    def known(self) -> bool:
        return self.total_usd is not None


@dataclass(slots=True)
class Exchange:
    """One proxied call: raw bytes both ways, redacted headers, timings and results."""

    id: str  # uuid4 hex, assigned when the request arrives
    started_at: float  # epoch seconds when the request arrived
    method: str
    path: str  # path and query exactly as the client sent them
    kind: CallKind
    request_headers: dict[str, str] = field(default_factory=dict)  # lower-case, secrets removed
    request_body: bytes = b""  # the bytes forwarded, unmodified
    status: int | None = None  # None when the upstream never answered
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""  # decoded copy (content-encoding removed)
    response_encoding: str | None = None  # content-encoding as sent on the wire
    streamed: bool = False  # text/event-stream
    # Milliseconds from started_at; None when the moment never came.
    ttfb_ms: float | None = None  # first response byte from the upstream
    ttft_ms: float | None = None  # first content delta (text/thinking/tool input)
    duration_ms: float | None = None  # last byte to the client
    session_id: str | None = None
    agent_id: str | None = None  # subagent id; None on main-agent calls
    model: str | None = None  # from the response, else the request
    stop_reason: str | None = None
    usage: Usage | None = None
    cost: Cost | None = None
    outcome: Outcome = Outcome.COMPLETE
    error: str | None = None  # human-readable reason for any non-complete outcome
    request_bytes: int = 0  # wire sizes, kept even when bodies are shed
    response_bytes: int = 0

    @property
    def client(self) -> str:
        """Which client made the call: ``codex`` or ``claude-code`` (see :func:`client_of`)."""
        return client_of(self.kind, self.path, self.request_headers)

    @property
    def is_llm_call(self) -> bool:
        return self.kind is CallKind.MESSAGES or self.kind is CallKind.RESPONSES

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; bodies as base64 so arbitrary bytes round-trip."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode("ascii")
            elif isinstance(value, (Usage, Cost)):
                value = asdict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exchange:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for name in ("request_body", "response_body"):
            if isinstance(kwargs.get(name), str):
                kwargs[name] = base64.b64decode(kwargs[name])
        if isinstance(kwargs.get("usage"), dict):
            kwargs["usage"] = Usage(**kwargs["usage"])
        if isinstance(kwargs.get("cost"), dict):
            kwargs["cost"] = Cost(**kwargs["cost"])
        kwargs["kind"] = CallKind(kwargs["kind"])
        if "outcome" in kwargs:
            kwargs["outcome"] = Outcome(kwargs["outcome"])
        return cls(**kwargs)


def classify(method: str, path: str) -> CallKind:
    """Decide the call kind from the request line (query string ignored)."""
    bare = path.split("?", 1)[0].rstrip("/")
    if method == "POST" and bare == "/v1/messages":
        return CallKind.MESSAGES
    if method == "POST" and bare == "/v1/messages/count_tokens":
        return CallKind.COUNT_TOKENS
    # "WEBSOCKET" is the relay's method for one turn on a Responses WebSocket (proxy/websocket.py).
    if method in ("POST", "WEBSOCKET") and bare in ("/v1/responses", "/backend-api/codex/responses"):
        return CallKind.RESPONSES
    return CallKind.OTHER


CODEX = "codex"
CLAUDE_CODE = "claude-code"


def client_of(kind: CallKind, path: str, headers: dict[str, str]) -> str:
    """``codex`` for Responses calls and anything Codex sent (its ``originator`` header, the
    ChatGPT backend's paths); ``claude-code`` otherwise, as every call was before Codex came."""
    if kind is CallKind.RESPONSES or path.startswith("/backend-api/") or "originator" in headers:
        return CODEX
    return CLAUDE_CODE


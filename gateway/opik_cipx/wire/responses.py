"""Read an OpenAI Responses answer into usage, model, status and output items.

The same events arrive two ways: as an SSE body (``POST /v1/responses`` with ``stream: true``)
or as one JSON text message each on a WebSocket turn (the relay records each message as one
chunk). A non-streamed answer is one JSON response object. Pure and sans-IO like
:mod:`opik_cipx.wire.response`; nothing here raises on what the upstream sent.

Usage comes only from the terminal event's ``response.usage`` (``response.completed``, or
``.incomplete``/``.failed`` when they carry it). OpenAI's ``input_tokens`` includes the cached
part (``input_tokens_details.cached_tokens``), so the :class:`Usage` splits it: uncached input in
``input_tokens``, the cached part in ``cache_read_input_tokens``; ``output_tokens`` includes
``output_tokens_details.reasoning_tokens``, kept apart in ``reasoning_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..model import Outcome, Usage
from .response import ResponseSummary
from .sse import SSEDecoder

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# Events whose arrival is the first output the model produced.
_FIRST_OUTPUT = ("response.output_text.delta", "response.function_call_arguments.delta",
                 "response.custom_tool_call_input.delta", "response.reasoning_summary_text.delta",
                 "response.reasoning_text.delta", "response.refusal.delta")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_openai(raw: dict[str, Any]) -> Usage:
    """A :class:`Usage` from a Responses ``usage`` object (``raw`` keeps it whole)."""
    details = raw.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    out_details = raw.get("output_tokens_details")
    out_details = out_details if isinstance(out_details, dict) else {}
    total_in = _int(raw.get("input_tokens"))
    cached = min(_int(details.get("cached_tokens")), total_in)
    return Usage(
        input_tokens=total_in - cached,
        cache_read_input_tokens=cached,
        output_tokens=_int(raw.get("output_tokens")),
        reasoning_tokens=_int(out_details.get("reasoning_tokens")),
        service_tier=raw.get("service_tier") if isinstance(raw.get("service_tier"), str) else None,
        raw=dict(raw),
    )


class ResponsesReader:
    """Consumes Responses events one by one and sums them up."""

    def __init__(self) -> None:
        self.summary = ResponseSummary()
        self._terminal: str | None = None
        self._error: str | None = None
        self._items: dict[int, dict[str, Any]] = {}

    def event(self, data: Any, at: float | None) -> None:
        self.summary.events += 1
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        s = self.summary
        if kind in _FIRST_OUTPUT and s.first_token_at is None and data.get("delta"):
            s.first_token_at = at
        response = data.get("response")
        if isinstance(response, dict):
            self._response(response)
        if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            index = data.get("output_index")
            self._items[index if isinstance(index, int) else len(self._items)] = data["item"]
        elif kind in TERMINAL:
            self._terminal = str(kind)
            if kind == "response.failed":
                self._error = _error_text(response.get("error") if isinstance(response, dict) else None) \
                    or "response.failed"
        elif kind == "error":
            self._error = _error_text(data.get("error") if isinstance(data.get("error"), dict) else data) or "error"

    def _response(self, response: dict[str, Any]) -> None:
        s = self.summary
        if isinstance(response.get("model"), str):
            s.model = response["model"]
        if isinstance(response.get("id"), str):
            s.message_id = response["id"]
        if isinstance(response.get("status"), str):
            s.stop_reason = response["status"]
            incomplete = response.get("incomplete_details")
            if isinstance(incomplete, dict) and isinstance(incomplete.get("reason"), str):
                s.stop_reason = f"{response['status']}: {incomplete['reason']}"
        if isinstance(response.get("usage"), dict):
            s.usage = usage_from_openai(response["usage"])
        output = response.get("output")
        if isinstance(output, list) and output:
            self._items = {n: item for n, item in enumerate(output) if isinstance(item, dict)}

    def finish(self) -> ResponseSummary:
        s = self.summary
        s.content = [self._items[k] for k in sorted(self._items)]
        if self._error is not None:
            s.outcome, s.error = Outcome.STREAM_ERROR, self._error
        elif self._terminal is None:
            s.outcome = Outcome.TRUNCATED
            s.error = f"stream ended after {s.events} events without response.completed"
        return s


def _error_text(err: Any) -> str | None:
    if not isinstance(err, dict):
        return None
    code, message = err.get("code") or err.get("type"), err.get("message")
    parts = [str(p) for p in (code, message) if isinstance(p, str) and p]
    return ": ".join(parts) or None


def read_responses(status: int, content_type: str, chunks: Iterable[tuple[float, bytes]], *,
                   websocket: bool) -> ResponseSummary:
    """Sum up one Responses answer: WebSocket messages, an SSE body, or one JSON object."""
    reader = ResponsesReader()
    if websocket:
        for at, payload in chunks:
            reader.event(_loads(payload), at)
        return reader.finish()
    pairs = list(chunks)
    if status >= 400:
        s = ResponseSummary(outcome=Outcome.HTTP_ERROR)
        body = b"".join(c for _, c in pairs)
        parsed = _loads(body)
        s.error = _error_text(parsed.get("error") if isinstance(parsed, dict) else None) or f"HTTP {status}"
        return s
    if content_type.startswith("text/event-stream"):
        decoder = SSEDecoder()
        last: float | None = None
        for at, chunk in pairs:
            last = at
            for ev in decoder.feed(chunk):
                reader.event(_loads(ev.data), at)
        for ev in decoder.close():
            reader.event(_loads(ev.data), last)
        return reader.finish()
    parsed = _loads(b"".join(c for _, c in pairs))
    if isinstance(parsed, dict):
        reader.event({"type": "response.completed" if parsed.get("status") == "completed" else "response",
                      "response": parsed}, pairs[-1][0] if pairs else None)
        if parsed.get("status") in ("incomplete", "failed"):
            reader.event({"type": f"response.{parsed['status']}", "response": parsed}, None)
    s = reader.finish()
    if not isinstance(parsed, dict):
        s.outcome, s.error = Outcome.UNPARSEABLE, "the response body is not a JSON object"
    return s


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None

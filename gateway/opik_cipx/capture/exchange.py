"""A finished Recorder becomes an Exchange: decode, parse usage, redact, price. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from ..model import CallKind, Exchange, Outcome, classify
from ..pricing import PriceTable
from ..proxy.recorder import Recorder
from ..wire.redact import CREDENTIAL_HEADER, credential_kind, redact_headers
from ..wire.request import model_from_body, session_from_body, speed_from_body
from ..wire.response import ResponseSummary, decode_content, read_response
from ..wire.responses import read_responses


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000.0, 3)


def build_exchange(rec: Recorder, prices: PriceTable | None) -> Exchange:
    """Turn a finished Recorder into an Exchange. Pure: no clock, no I/O."""
    return build_with_summary(rec, prices)[0]


def build_with_summary(
    rec: Recorder, prices: PriceTable | None, *, body_speed: bool = True
) -> tuple[Exchange, ResponseSummary | None]:
    """The Exchange and the parsed response it came from (its content blocks feed attribution).

    ``body_speed=False``: the caller takes a ``speed`` the usage does not state from the
    attribution walk (``Attribution.speed``) instead of a search through the whole body.
    """
    kind = classify(rec.method, rec.path)
    request_headers = redact_headers(rec.request_headers.items())
    request_headers[CREDENTIAL_HEADER] = credential_kind(rec.request_headers.items())
    response_headers = redact_headers(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in rec.response_headers
    )
    encoding = response_headers.get("content-encoding")
    content_type = response_headers.get("content-type", "").strip().lower()
    raw_size = len(rec.response)
    websocket = rec.method == "WEBSOCKET"  # one turn on a Responses WebSocket: chunks are messages
    timed: Iterable[tuple[float, bytes]]
    if encoding is None and not websocket:
        # Not encoded: the body is the buffer as it passed, and its pieces are made one at a
        # time as the parser reads them, not as a list (a long stream has tens of thousands).
        response_body = bytes(rec.response)
        timed, has_pieces, decode_error = zip(rec.times, rec.pieces()), len(rec.ends) > 0, None
    else:
        decoded, decode_error = decode_content(encoding, rec.chunks)
        # A WebSocket turn's messages as JSON lines; an HTTP body as it was.
        response_body = b"\n".join(decoded) if websocket else b"".join(decoded)
        timed, has_pieces = zip(rec.times, decoded), bool(decoded)

    summary: ResponseSummary | None = None
    # Only /v1/messages bodies are messages; count_tokens answers {"input_tokens": N}.
    if rec.status is not None and has_pieces and kind is CallKind.MESSAGES:
        summary = read_response(rec.status, content_type, timed)
    elif rec.status is not None and kind is CallKind.RESPONSES and (has_pieces or websocket):
        summary = read_responses(rec.status, content_type, timed, websocket=websocket)

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
        response_body=response_body,
        response_encoding=encoding,
        streamed=websocket or content_type.startswith("text/event-stream"),
        ttfb_ms=_ms(rec.t_head, rec.t_start),
        duration_ms=_ms(rec.t_end, rec.t_start),
        session_id=(request_headers.get("x-claude-code-session-id") or request_headers.get("session-id")
                    or session_from_body(rec.body)),
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
    if decode_error and ex.outcome is Outcome.COMPLETE and ex.is_llm_call:
        ex.outcome = Outcome.UNPARSEABLE
        ex.error = decode_error
    # Codex hangs up as soon as it has read response.completed, often before the HTTP body's
    # last chunk: the answer was whole, so that is not a call the client lost.
    answered = (kind is CallKind.RESPONSES and rec.forced_outcome is Outcome.CLIENT_GONE
                and summary is not None and summary.outcome is Outcome.COMPLETE)
    if rec.forced_outcome is not None and not answered:
        # The wire's verdict (unreachable, cut off, client gone) outranks what the bytes suggest.
        ex.outcome = rec.forced_outcome
        ex.error = rec.error if not ex.error else f"{rec.error}; {ex.error}"
    if ex.usage is not None and ex.usage.speed is None and body_speed:
        ex.usage.speed = speed_from_body(rec.body)
    if ex.is_llm_call and ex.usage is not None and prices is not None:
        ex.cost = prices.price(ex.model, ex.usage, at=ex.started_at)
    return ex, summary


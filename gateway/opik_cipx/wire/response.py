"""Read an Anthropic Messages response into usage, model, stop reason and content.

Pure and sans-IO: the proxy's hot path only records ``(perf_time, chunk)`` pairs
and a worker feeds them here afterwards. Nothing in this module raises on what
the upstream sent; every oddity becomes an :class:`Outcome` and an ``error``
string on the :class:`ResponseSummary`.

Billing rule: ``message_start.message.usage`` is the starting object and each
``message_delta.usage`` is cumulative, so later values replace earlier ones key
by key (nested objects as a whole); nothing is ever summed.
"""

from __future__ import annotations

import importlib
import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..model import Outcome, Usage
from .sse import SSEDecoder, SSEEvent

# Deltas whose payload is a string that grows a field of the block, by delta type.
_TEXT_DELTAS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking")}
# Block type to assume when a delta arrives for an index that was never started.
_IMPLIED_BLOCK = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "tool_use"}
_SNIPPET = 200


@dataclass(slots=True)
class ResponseSummary:
    """What a response said about itself, however it ended."""

    model: str | None = None
    message_id: str | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    outcome: Outcome = Outcome.COMPLETE
    error: str | None = None  # human-readable reason for any non-complete outcome
    first_token_at: float | None = None  # `at` of the chunk completing the first non-empty content delta
    content: list[dict[str, Any]] = field(default_factory=list)  # reconstructed content blocks
    events: int = 0  # SSE events seen, recognised or not


def _describe_error(obj: Any) -> str | None:
    """``"type: message"`` from an Anthropic error envelope or its inner object, else None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("error"), dict):
        inner = obj["error"]
    elif obj.get("type") == "error":
        inner = obj
    else:
        return None
    kind = inner.get("type")
    message = inner.get("message")
    kind = kind if isinstance(kind, str) and kind and kind != "error" else None
    message = message if isinstance(message, str) and message else None
    if kind and message:
        return f"{kind}: {message}"
    return kind or message


def _snippet(body: bytes) -> str:
    text = " ".join(body[: _SNIPPET * 4].decode("utf-8", "replace").split())
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def _merge_usage(base: dict[str, Any], update: Any) -> None:
    # A null in a delta means "not reported here", not zero: the earlier value stands.
    if isinstance(update, dict):
        base.update((k, v) for k, v in update.items() if v is not None)


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class StreamReader:
    """Incremental reader of an Anthropic SSE body."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._summary = ResponseSummary()
        self._usage: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        # Growing strings are kept as fragment lists and joined once, at finish.
        self._parts: dict[tuple[int, str], list[str]] = {}
        self._stream_error: str | None = None
        self._stopped = False
        self._last_at: float | None = None
        self._done: ResponseSummary | None = None

    def feed(self, chunk: bytes, at: float) -> None:
        """Consume one captured chunk that reached us at perf time ``at``."""
        if self._done is not None:
            return
        self._last_at = at
        for event in self._decoder.feed(chunk):
            self._on_event(event, at)

    def finish(self) -> ResponseSummary:
        """End of body: flush, reconstruct content and decide the outcome. Idempotent."""
        if self._done is not None:
            return self._done
        for event in self._decoder.close():
            self._on_event(event, self._last_at)
        summary = self._summary
        summary.content = self._build_content()
        if self._usage is not None:
            summary.usage = Usage.from_api(self._usage)
        if self._stream_error is not None:
            summary.outcome = Outcome.STREAM_ERROR
            summary.error = self._stream_error
        elif not self._stopped:
            summary.outcome = Outcome.TRUNCATED
            summary.error = f"stream ended after {summary.events} events without message_stop"
        self._done = summary
        return summary

    def _on_event(self, event: SSEEvent, at: float | None) -> None:
        self._summary.events += 1
        try:
            data = json.loads(event.data)
        except (ValueError, RecursionError):
            return  # keep-alives, proxies' banners, garbage: counted, otherwise ignored
        if not isinstance(data, dict):
            return
        # The SDK dispatches on the event name; a bare data-only frame still names itself in "type".
        kind = event.event if event.event != "message" else _opt_str(data.get("type"))
        handler = self._HANDLERS.get(kind or "")
        if handler is not None:
            handler(self, data, at)

    def _message_start(self, data: dict[str, Any], at: float | None) -> None:
        message = data.get("message")
        if not isinstance(message, dict):
            return
        summary = self._summary
        summary.message_id = _opt_str(message.get("id")) or summary.message_id
        summary.model = _opt_str(message.get("model")) or summary.model
        summary.stop_reason = _opt_str(message.get("stop_reason")) or summary.stop_reason
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._usage = {}
            _merge_usage(self._usage, usage)

    def _block_start(self, data: dict[str, Any], at: float | None) -> None:
        index = data.get("index")
        block = data.get("content_block")
        if isinstance(index, int) and isinstance(block, dict):
            self._blocks[index] = dict(block)

    def _block_delta(self, data: dict[str, Any], at: float | None) -> None:
        index = data.get("index")
        delta = data.get("delta")
        if not isinstance(index, int) or not isinstance(delta, dict):
            return
        kind = _opt_str(delta.get("type")) or ""
        if index not in self._blocks:
            self._blocks[index] = {"type": _IMPLIED_BLOCK.get(kind, "unknown")}
        block = self._blocks[index]
        piece: Any = None
        if kind in _TEXT_DELTAS:
            key, source = _TEXT_DELTAS[kind]
            piece = delta.get(source)
            if isinstance(piece, str):
                self._parts.setdefault((index, key), []).append(piece)
        elif kind == "input_json_delta":
            piece = delta.get("partial_json")
            if isinstance(piece, str):
                self._parts.setdefault((index, "input"), []).append(piece)
        elif kind == "signature_delta":
            signature = delta.get("signature")
            if isinstance(signature, str):
                self._parts.setdefault((index, "signature"), []).append(signature)
        elif kind == "citations_delta":
            citation = delta.get("citation")
            if citation is not None:
                citations = block.get("citations")
                if not isinstance(citations, list):
                    citations = block["citations"] = []
                citations.append(citation)
        if self._summary.first_token_at is None and isinstance(piece, str) and piece:
            self._summary.first_token_at = at

    def _message_delta(self, data: dict[str, Any], at: float | None) -> None:
        delta = data.get("delta")
        if isinstance(delta, dict):
            stop_reason = _opt_str(delta.get("stop_reason"))
            if stop_reason is not None:
                self._summary.stop_reason = stop_reason
        usage = data.get("usage")
        if isinstance(usage, dict):
            if self._usage is None:
                self._usage = {}
            _merge_usage(self._usage, usage)

    def _message_stop(self, data: dict[str, Any], at: float | None) -> None:
        self._stopped = True

    def _error(self, data: dict[str, Any], at: float | None) -> None:
        # Keep the first: later errors are usually fallout from it.
        if self._stream_error is None:
            self._stream_error = _describe_error(data) or "error event without details"

    _HANDLERS: ClassVar[dict[str, Callable[[StreamReader, dict[str, Any], float | None], None]]] = {
        "message_start": _message_start,
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "message_delta": _message_delta,
        "message_stop": _message_stop,
        "error": _error,
    }

    def _build_content(self) -> list[dict[str, Any]]:
        for (index, key), pieces in self._parts.items():
            block = self._blocks[index]
            joined = "".join(pieces)
            if key != "input":
                start = block.get(key)
                block[key] = (start if isinstance(start, str) else "") + joined
            elif joined.strip():
                try:
                    block["input"] = json.loads(joined)
                except (ValueError, RecursionError):
                    block.pop("input", None)
                    block["input_raw"] = joined
        return [self._blocks[i] for i in sorted(self._blocks)]


def _from_message(message: dict[str, Any], summary: ResponseSummary) -> None:
    summary.message_id = _opt_str(message.get("id"))
    summary.model = _opt_str(message.get("model"))
    summary.stop_reason = _opt_str(message.get("stop_reason"))
    usage = message.get("usage")
    if isinstance(usage, dict):
        summary.usage = Usage.from_api(usage)
    content = message.get("content")
    if isinstance(content, list):
        summary.content = [dict(block) for block in content if isinstance(block, dict)]


def read_json_response(body: bytes, status: int) -> ResponseSummary:
    """Read a non-streaming body: a message on success, an error envelope otherwise."""
    summary = ResponseSummary()
    parsed: Any = None
    parse_error: str | None = None
    if not body.strip():
        parse_error = "empty body"
    else:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as exc:
            parse_error = f"body is not JSON ({type(exc).__name__})"
    if status >= 400:
        summary.outcome = Outcome.HTTP_ERROR
        detail = _describe_error(parsed) if parsed is not None else None
        if detail is None:
            detail = f"HTTP {status}: {_snippet(body)}" if body.strip() else f"HTTP {status}"
        summary.error = detail
        if isinstance(parsed, dict) and parsed.get("type") == "message":
            _from_message(parsed, summary)
        return summary
    if parse_error is not None:
        summary.outcome = Outcome.UNPARSEABLE
        summary.error = f"{parse_error}: {_snippet(body)}" if body.strip() else parse_error
        return summary
    if not isinstance(parsed, dict) or parsed.get("type") != "message":
        kind = parsed.get("type") if isinstance(parsed, dict) else type(parsed).__name__
        summary.outcome = Outcome.UNPARSEABLE
        summary.error = f"JSON body is not a message (type={kind!r})"
        return summary
    _from_message(parsed, summary)
    return summary


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _looks_like_sse(body: bytes) -> bool:
    head = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:6]
    return head.startswith((b"event:", b"data:", b":"))


def read_response(
    status: int, content_type: str | None, body_chunks: Iterable[tuple[float, bytes]]
) -> ResponseSummary:
    """Dispatch: text/event-stream -> StreamReader; else JSON. status >= 400 -> Outcome.HTTP_ERROR
    with the error type/message from the body when it has one (SSE or JSON).

    A body with no (or an empty) Content-Type is sniffed: SSE framing wins over JSON.
    """
    media = _media_type(content_type)
    if media == "text/event-stream" and status < 400:
        # The common case, read as the pieces come: a long stream is tens of thousands of them,
        # and nothing below needs them again.
        reader = StreamReader()
        for at, chunk in body_chunks:
            reader.feed(chunk, at)
        return reader.finish()
    chunks = list(body_chunks)
    if media != "text/event-stream":
        body = b"".join(chunk for _, chunk in chunks)
        if content_type or not _looks_like_sse(body):
            return read_json_response(body, status)
    reader = StreamReader()
    for at, chunk in chunks:
        reader.feed(chunk, at)
    summary = reader.finish()
    if status >= 400:
        detail = summary.error if summary.outcome is Outcome.STREAM_ERROR else None
        if detail is None:
            # Error bodies labelled as a stream are sometimes a plain JSON envelope.
            body = b"".join(chunk for _, chunk in chunks)
            detail = read_json_response(body, status).error if body.strip() else None
        summary.outcome = Outcome.HTTP_ERROR
        summary.error = detail or f"HTTP {status}"
    return summary


# --- Content-Encoding ---------------------------------------------------------------

_Step = Callable[[bytes], bytes]


class _Truncated(Exception):
    """The compressed stream stopped before its end marker."""


class _Zlib:
    """gzip (members may be concatenated) or deflate (zlib-wrapped, or raw as some servers send)."""

    def __init__(self, coding: str) -> None:
        self._gzip = coding in ("gzip", "x-gzip")
        # Stubs-only name of what zlib.decompressobj() returns (never evaluated at runtime).
        self._obj: zlib._Decompress | None = None
        # deflate input kept until the first output proves the wrapper guess right; a raw
        # stream can start with two bytes that pass the zlib header check by chance.
        self._seen: bytearray | None = None if self._gzip else bytearray()
        self._wrapped = True

    def step(self, data: bytes) -> bytes:
        if self._gzip:
            return self._gzip_step(data)
        seen = self._seen
        if seen is None:  # the wrapper guess is settled, so the decompressor exists
            assert self._obj is not None
            return self._obj.decompress(data)
        seen += data
        if self._obj is None:
            if len(seen) < 2:
                return b""
            cmf, flg = seen[0], seen[1]
            self._wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._obj = self._deflate(self._wrapped)
            data = bytes(seen)
        try:
            out = self._obj.decompress(data)
        except zlib.error:
            if not self._wrapped:
                raise
            self._wrapped = False
            self._obj = self._deflate(False)
            out = self._obj.decompress(bytes(seen))
        if out:
            self._seen = None
        return out

    @staticmethod
    def _deflate(wrapped: bool) -> zlib._Decompress:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def _gzip_step(self, data: bytes) -> bytes:
        if self._obj is None:
            self._obj = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out = [self._obj.decompress(data)]
        # A gzip body may be several members back to back; each needs a fresh decompressor.
        while self._obj.eof and self._obj.unused_data:
            rest = self._obj.unused_data
            self._obj = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out.append(self._obj.decompress(rest))
        return b"".join(out)

    def flush(self) -> bytes:
        if self._obj is None:
            if not self._seen:
                return b""
            raise _Truncated("body shorter than its header")
        tail = self._obj.flush()
        if not self._obj.eof:
            raise _Truncated("compressed body ended early")
        return tail


class _Generic:
    """A decompressor exposing one ``feed(bytes) -> bytes`` method (brotli, zstd)."""

    def __init__(self, feed: _Step, finished: Callable[[], bool] | None) -> None:
        self._feed = feed
        self._finished = finished

    def step(self, data: bytes) -> bytes:
        return self._feed(data)

    def flush(self) -> bytes:
        if self._finished is not None and not self._finished():
            raise _Truncated("compressed body ended early")
        return b""


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken optional codec must not take the capture down
        return None


def _brotli() -> _Generic | None:
    module = _try_import("brotli")
    if module is not None and hasattr(module, "Decompressor"):
        obj = module.Decompressor()
        feed = getattr(obj, "process", None) or obj.decompress
        finished = getattr(obj, "is_finished", None)
        return _Generic(feed, finished)
    module = _try_import("brotlicffi")
    if module is not None:
        obj = module.Decompressor()
        finished = getattr(obj, "is_finished", None)
        return _Generic(obj.decompress, finished)
    return None


def _zstd() -> _Generic | None:
    module = _try_import("compression.zstd")
    if module is not None:
        obj = module.ZstdDecompressor()
        return _Generic(obj.decompress, lambda: bool(obj.eof))
    module = _try_import("zstandard")
    if module is not None:
        obj = module.ZstdDecompressor().decompressobj()
        return _Generic(obj.decompress, lambda: bool(getattr(obj, "eof", True)))
    return None


def _decoder_for(coding: str) -> _Zlib | _Generic | None:
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Zlib(coding)
    if coding == "br":
        return _brotli()
    if coding == "zstd":
        return _zstd()
    return None


def _decode_all(decoder: _Zlib | _Generic, chunks: list[bytes]) -> tuple[list[bytes], str | None]:
    """One output per input chunk; the flushed tail joins the last. Codec errors propagate."""
    out = [decoder.step(chunk) for chunk in chunks]
    try:
        out[-1] += decoder.flush()
    except _Truncated as exc:
        return out, str(exc)
    return out, None


def decode_content(encoding: str | None, chunks: Iterable[bytes]) -> tuple[list[bytes], str | None]:
    """Undo Content-Encoding (identity, gzip, x-gzip, deflate incl. raw deflate, and br if the `brotli`
    or `brotlicffi` module is importable; zstd if `compression.zstd`/`zstandard` is importable) on the capture's
    own copy, chunk by chunk (streaming decompressor, keeps chunk boundaries roughly so timings stay meaningful).
    Returns (decoded chunks, error message or None). Undecodable -> the original chunks + an error. Never raises.

    On success the result has one entry per input chunk (some possibly empty), so it can be
    zipped back with the chunks' arrival times. Chained codings ("gzip, br") are undone in
    reverse order. A body that decodes cleanly but stops before the end marker (a cut
    connection) keeps what decoded, with an error saying so: that prefix is still the best
    record of what the client received.
    """
    original = list(chunks)
    codings = [c.strip().lower() for c in (encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings or not original:
        return original, None
    current = original
    truncated: str | None = None
    for coding in reversed(codings):
        decoder = _decoder_for(coding)
        if decoder is None:
            return original, f"unsupported content-encoding: {coding}"
        try:
            current, cut = _decode_all(decoder, current)
        except Exception as exc:  # noqa: BLE001 - any codec failure means "keep the raw bytes"
            return original, f"{coding} decode failed: {exc}"
        if cut is not None and truncated is None:
            truncated = f"{coding}: {cut}"
    return current, truncated

"""HTTP/1.1 framing the relay writes itself: which headers cross this hop, and the gateway's own
error answers. Pure functions over bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable

# RFC 9110 section 7.6.1 connection-specific fields, plus the legacy ones proxies still see.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Set by this hop rather than copied across it. Expect is answered here (100 Continue).
REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Content-Length stays on responses: bodies are relayed still encoded, so it stays true.
RESPONSE_DROP = HOP_BY_HOP

ADMIN_PREFIX = b"/_cipx"
# A request head that never ends is refused rather than buffered without bound.
MAX_HEAD = 256 * 1024

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

def end_to_end(headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """Headers minus hop-by-hop ones and any the Connection header names (RFC 9110 7.6.1)."""
    # One pass that keeps the caller's pairs: this runs twice per call on the hot path, and
    # the Connection header almost always names only fields dropped anyway (keep-alive, close).
    out = []
    named: set[bytes] = set()
    for pair in headers:
        low = pair[0].lower()
        if low in drop:
            if low == b"connection":
                named.update(t.strip() for t in pair[1].lower().split(b","))
            continue
        out.append(pair)
    named -= drop
    named.discard(b"")
    if named:
        out = [pair for pair in out if pair[0].lower() not in named]
    return out


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``name: value\r\n`` lines, each pair exactly as received."""
    if not headers:
        return b""
    return b"\r\n".join(map(b": ".join, headers)) + b"\r\n"


def gateway_error(status: int, message: str, *, close: bool = False, kind: str = "api_error") -> bytes:
    """A whole response in Anthropic's error shape, which the client's SDK knows how to read."""
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
              502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, reason, len(body), b"Connection: close\r\n" if close else b"")) + body

"""The byte-forwarding hot path.

Everything here exists to move bytes between Claude Code and the upstream as
fast and as faithfully as possible. The only capture work done on this path is
appending references to a :class:`~opik_cipx.capture.Recorder`; parsing,
decoding, pricing and storage happen later, off the request's critical path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .capture import Recorder

log = logging.getLogger(__name__)

# RFC 9110 section 7.6.1 connection-specific fields, plus the legacy ones proxies still see.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Set by the transport on each leg rather than copied across it.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
# Content-Length stays on responses: bodies are relayed still encoded, so it stays true.
_RESPONSE_DROP = HOP_BY_HOP

# aiohttp's client adds these when absent; a transparent proxy must not.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def end_to_end(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> CIMultiDict[str]:
    """Copy headers minus hop-by-hop ones and any the Connection header names."""
    items = list(headers)
    named: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        low = name.lower()
        if low not in drop and low not in named:
            out.add(name, value)
    return out


def gateway_error(status: int, message: str) -> web.Response:
    """An Anthropic-shaped error the client's SDK knows how to read."""
    body = json.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
    return web.Response(status=status, body=body.encode(), content_type="application/json")


class Forwarder:
    """Forwards one request at a time to the upstream over a pooled ClientSession.

    ``record`` receives each finished :class:`Recorder`; it must be cheap and
    must not raise into the proxy (the capture sink guarantees both).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream_url: str,
        record: Callable[[Recorder], None],
        *,
        head_timeout: float,
        upstream_proxy: str | None = None,
        seal: Callable[[Recorder], Awaitable[None]] | None = None,
    ) -> None:
        self._session = session
        self._upstream = upstream_url.rstrip("/")
        self._record = record
        # Makes a complete call durable (the capture journal) before the bytes that complete
        # it reach the client; must not raise. Costs time-to-last-byte only.
        self._seal = seal or _no_seal
        self._head_timeout = head_timeout
        self._proxy = upstream_proxy

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rec = Recorder(request.method, request.raw_path, request.headers)
        try:
            return await self._forward(request, rec)
        except asyncio.CancelledError:
            rec.client_gone("client disconnected")
            raise
        finally:
            rec.finish()
            self._record(rec)

    async def _forward(self, request: web.Request, rec: Recorder) -> web.StreamResponse:
        body = await request.read() if request.body_exists else b""
        rec.body = body
        headers = end_to_end(request.headers.items(), _REQUEST_DROP)
        try:
            async with asyncio.timeout(self._head_timeout):
                upstream = await self._session.request(
                    request.method,
                    self._upstream + request.raw_path,
                    data=body if request.body_exists else None,
                    headers=headers,
                    skip_auto_headers=_NO_AUTO_HEADERS,
                    allow_redirects=False,
                    proxy=self._proxy,
                )
        except TimeoutError:
            msg = f"opik-cipx: upstream {self._upstream} sent no response within {self._head_timeout:g}s"
            rec.unreachable(504, msg)
            return gateway_error(504, msg)
        except aiohttp.ClientError as exc:
            msg = f"opik-cipx: cannot reach upstream {self._upstream}: {type(exc).__name__}: {exc}"
            rec.unreachable(502, msg)
            return gateway_error(502, msg)

        try:
            rec.response_head(upstream.status, upstream.raw_headers)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(end_to_end(_decode_raw(upstream.raw_headers), _RESPONSE_DROP))
            await response.prepare(request)
            content = upstream.content
            write = response.write
            append = rec.chunk
            # With a Content-Length, the chunk that reaches it completes the call for the client.
            remaining = upstream.content_length if request.method != "HEAD" else None
            sealed = False
            try:
                while True:
                    # readany() hands over whatever has arrived: one SSE event is never held back.
                    chunk = await content.readany()
                    if not chunk:
                        break
                    append(chunk)
                    if remaining is not None:
                        remaining -= len(chunk)
                        if remaining <= 0 and not sealed:
                            sealed = True
                            await self._seal(rec)
                    await write(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                # The upstream broke off: break the client's stream the same way, so it
                # sees an incomplete response rather than a clean, silently short one.
                rec.upstream_broke(f"upstream connection lost mid-response: {exc}")
                if request.transport is not None:
                    request.transport.abort()
                return response
            except ConnectionResetError as exc:
                rec.client_gone(f"client connection lost: {exc}")
                return response
            if not sealed:
                await self._seal(rec)  # before the stream's terminating chunk
            await response.write_eof()
            return response
        finally:
            if upstream.content.at_eof():
                upstream.release()  # back to the pool
            else:
                upstream.close()  # cut short: this connection cannot be reused


async def _no_seal(rec: Recorder) -> None:
    return None


def _decode_raw(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    # raw_headers keep duplicates and the upstream's spelling; latin-1 maps bytes 1:1.
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]

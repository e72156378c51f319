"""One proxied request/response on the relay: the client's request streamed to the upstream while
it arrives, the upstream's response streamed back, and the Recorder noted as bytes pass."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from .http import (
    CONTINUE,
    HOP_BY_HOP,
    LAST_CHUNK,
    REQUEST_DROP,
    RESPONSE_DROP,
    end_to_end,
    gateway_error,
    header_block,
)
from .recorder import HeaderList, Recorder
from .upstream import Connection, UpstreamError

if TYPE_CHECKING:
    from .relay import Downstream

log = logging.getLogger(__name__)

# How a response body is framed toward the client.
_NONE, _LENGTH, _CHUNKED, _RAW = range(4)
# A body re-framed chunked toward the client keeps the upstream's Trailer announcement: its
# trailer fields are relayed. A close-delimited one (HTTP/1.0 clients) can carry none.
_RECHUNKED_DROP = (RESPONSE_DROP - {b"trailer"}) | {b"content-length"}
_RAW_DROP = RESPONSE_DROP | {b"content-length"}


class Call:
    """One proxied request/response. Reads the request from the client and the response from the
    upstream (it is the upstream parser's protocol), and writes each side onward as it arrives."""

    __slots__ = (
        "answered",
        "chunked_up",
        "completing",
        "conn",
        "connecting",
        "down",
        "expect_continue",
        "finished",
        "head_sent",
        "headers",
        "http11",
        "interim",
        "keep_alive",
        "length",
        "method",
        "mode",
        "out",
        "parser",
        "pool",
        "reason",
        "rec",
        "relay",
        "remaining",
        "request_done",
        "resp_headers",
        "retried",
        "started",
        "target",
        "timer",
        "trailers",
        "until_close",
        "upstream_reusable",
    )

    def __init__(self, down: Downstream, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 *, http11: bool, keep_alive: bool) -> None:
        self.down = down
        self.relay = down.relay
        self.method = method
        self.target = target
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.pool = down.relay.pick(target, headers)  # the upstream this path/client goes to
        self.rec = Recorder(method.decode("latin-1"), target.decode("latin-1"), HeaderList(headers))
        self.request_done = False
        self.chunked_up = False
        self.expect_continue = False
        self.length: bytes | None = None
        for name, value in headers:
            low = name.lower()
            if low == b"content-length":
                self.length = value
            elif low == b"transfer-encoding":
                self.chunked_up = b"chunked" in value.lower()
            elif low == b"expect":
                self.expect_continue = value.lower() == b"100-continue"
        self.answered = False
        self.until_close = False
        self.started = False
        self.conn: Connection | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.retried = False
        self.head_sent = False
        self.interim = False
        self.reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []  # a chunked response's trailer fields
        # What one upstream read produced for the client: sent in one write when the read is
        # parsed, not one write per chunk (a burst of SSE events costs one syscall, not ten).
        self.out: list[bytes] = []
        self.mode = _NONE
        self.remaining = 0
        self.completing = False
        self.finished = False
        self.upstream_reusable = False

    # the request side -------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        self.relay.call_started()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.relay.head_timeout, self._head_timeout)
        if self.expect_continue and not self.request_done:
            self.down.write(CONTINUE)
        conn = self.pool.take()
        if conn is not None:
            self._attach(conn)
        else:
            self.connecting = loop.create_task(self._connect())

    def request_body(self, data: bytes) -> None:
        self.rec.body_parts.append(data)  # also what a retry on a fresh connection resends
        conn = self.conn
        if conn is not None and conn.transport is not None and not self.finished:
            conn.transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked_up else data)

    def request_complete(self) -> None:
        self.request_done = True
        conn = self.conn
        if self.chunked_up and conn is not None and conn.transport is not None and not self.finished:
            conn.transport.write(LAST_CHUNK)
        if self.finished:
            # The response was over before the request: only now may the connection go on.
            self.down.call_done(self, self.keep_alive)

    def _request_head(self) -> bytes:
        target = self.pool.target
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (self.method, target.request_target(self.target),
                                                      target.host_header),
                 header_block(end_to_end(self.headers, REQUEST_DROP))]
        if self.chunked_up:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif self.length is not None:
            lines.append(b"Content-Length: %s\r\n" % self.length)
        lines.append(target.proxy_headers)
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _connect(self) -> None:
        try:
            conn = await self.pool.open()
        except asyncio.CancelledError:
            raise
        except (OSError, UpstreamError, TimeoutError, ValueError) as exc:
            if not self.finished:
                self._fail(502, f"opik-cipx: cannot reach upstream {self.pool.target.url}: "
                                f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.connecting = None
        if self.finished:
            self.pool.give_back(conn)
            return
        self._attach(conn)

    def _attach(self, conn: Connection) -> None:
        self.conn = conn
        conn.owner = self
        self.parser = httptools.HttpResponseParser(self)
        assert conn.transport is not None
        if self.down.writing_paused:
            conn.transport.pause_reading()
        head = self._request_head()
        body = self.rec.body_parts
        if self.chunked_up:
            framed = [b"%x\r\n%s\r\n" % (len(part), part) for part in body]
            if self.request_done:
                framed.append(LAST_CHUNK)
            conn.transport.write(head + b"".join(framed))
        elif body:
            conn.transport.writelines([head, *body])
        else:
            conn.transport.write(head)

    # the response side: callbacks from the upstream connection and its parser ---------------------
    def upstream_data(self, data: bytes) -> None:
        if self.finished:
            return
        self.answered = True
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.error("proxy: error handling a response", exc_info=exc)  # a bug here, not bad input
            if not self.finished:
                self._upstream_failed(f"upstream sent an invalid response: {exc}", exc)
        if self.out:
            self._flush()

    def _flush(self) -> None:
        out, self.out = self.out, []
        self.down.write(out[0] if len(out) == 1 else b"".join(out))

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head, the parser reports a chunked body's trailer fields the same way.
        (self.trailers if self.head_sent else self.resp_headers).append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser is None:
            return  # finished within this read: whatever the upstream sent after is not ours
        status = parser.get_status_code()
        if status < 200:
            # 1xx interim answers (we never send Expect upstream, but a server may still send 100).
            self.interim = True
            self.reason, self.resp_headers = b"", []
            return
        if self.timer is not None:
            self.timer.cancel()
        self.upstream_reusable = parser.should_keep_alive()
        raw = tuple(self.resp_headers)
        self.rec.response_head(status, raw)
        no_body = self.method == b"HEAD" or status in (204, 304)
        chunked = length = None
        for name, value in raw:
            low = name.lower()
            if low == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif low == b"content-length":
                length = value
        if no_body:
            mode = _NONE
        elif chunked or length is None:
            # Re-framed for this hop: chunked to HTTP/1.1 clients, close-delimited to HTTP/1.0 ones.
            mode = _CHUNKED if self.http11 else _RAW
        else:
            mode = _LENGTH
            self.remaining = int(length)
        self.until_close = not no_body and not chunked and length is None
        if mode == _RAW:
            self.keep_alive = False
        self.mode = mode
        drop = RESPONSE_DROP if mode in (_NONE, _LENGTH) else _RECHUNKED_DROP if mode == _CHUNKED else _RAW_DROP
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, self.reason), header_block(end_to_end(raw, drop))]
        if mode == _CHUNKED:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        self.head_sent = True
        if mode == _NONE or (mode == _LENGTH and self.remaining <= 0):
            # The head is the whole response. A HEAD answer's parser would wait for a body:
            # this connection's parser is replaced by the next call's anyway.
            self._complete(head)
        else:
            self.out.append(head)

    def on_body(self, data: bytes) -> None:
        if self.finished or self.completing:
            return
        self.rec.chunk(data)
        mode = self.mode
        if mode == _LENGTH:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self._complete(data)  # the chunk that completes the body waits for the seal
                return
            self.out.append(data)
        elif mode == _CHUNKED:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.completing and not self.finished:
            self._complete(self._last_chunk() if self.mode == _CHUNKED else b"")

    def _last_chunk(self) -> bytes:
        """The zero-size chunk, with the upstream's trailer fields when it sent any."""
        if not self.trailers:
            return LAST_CHUNK
        return b"0\r\n" + header_block(end_to_end(self.trailers, HOP_BY_HOP)) + b"\r\n"

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream_reusable = False
        if self.finished or self.completing:
            return
        if not self.head_sent:
            conn = self.conn
            if conn is not None and conn.reused and not self.retried and not self.answered:
                # A pooled connection the upstream had closed while idle: nothing was answered,
                # so the request is sent again, once, on a fresh connection.
                self.retried = True
                self.conn = None
                self.connecting = asyncio.get_running_loop().create_task(self._connect())
                return
            why = f": {exc}" if exc else ""
            self._fail(502, f"opik-cipx: upstream {self.pool.target.url} closed the connection "
                            f"before responding{why}")
        elif self.until_close and exc is None:
            # A body without Content-Length or chunked framing ends with the connection.
            self._complete(LAST_CHUNK if self.mode == _CHUNKED else b"")
        else:
            self._upstream_failed(f"upstream connection lost mid-response: {exc or 'closed by the upstream'}", exc)

    def upstream_paused(self, paused: bool) -> None:
        # The upstream takes the request body slower than the client sends it.
        (self.down.pause if paused else self.down.resume)("upstream")

    def client_paused(self, paused: bool) -> None:
        # The client reads the response slower than the upstream sends it.
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.closed:
            (conn.transport.pause_reading if paused else conn.transport.resume_reading)()

    def client_lost(self, why: str = "client disconnected") -> None:
        if self.finished:
            return
        self.rec.client_gone(why)
        self.upstream_reusable = False
        self._finish(keep_alive=False)

    # endings ---------------------------------------------------------------------------------
    def _complete(self, tail: bytes) -> None:
        """The response is whole upstream: seal it into the journal, then send the last bytes."""
        self.completing = True
        self.relay.seal(self.rec)
        if tail:
            self.out.append(tail)
        if self.out:
            self._flush()
        self._finish(keep_alive=self.keep_alive)

    def _fail(self, status: int, message: str) -> None:
        """The upstream never answered: answer for it."""
        self.rec.unreachable(status, message)
        self.upstream_reusable = False
        close = not self.keep_alive or not self.request_done
        self.down.write(gateway_error(status, message, close=close))
        self._finish(keep_alive=not close)

    def _upstream_failed(self, message: str, exc: Exception | None) -> None:
        if not self.head_sent:
            self._fail(502, f"opik-cipx: {message}")
            return
        # The upstream broke off: break the client's stream the same way, so it sees an
        # incomplete response rather than a clean, silently short one.
        self.rec.upstream_broke(message)
        self.upstream_reusable = False
        if self.out:
            self._flush()  # what did arrive is the client's, then the same break
        self.down.abort()
        self._finish(keep_alive=False)

    def _head_timeout(self) -> None:
        self.timer = None
        if self.head_sent or self.finished:
            return
        self._fail(504, f"opik-cipx: upstream {self.pool.target.url} sent no response within "
                        f"{self.relay.head_timeout:g}s")

    def _finish(self, *, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
        # The parser holds this call (its callbacks are our bound methods): a cycle that only the
        # cyclic GC frees, and an idle gateway runs none, so every finished call would keep its
        # Recorder until enough new objects pile up. Dropped here, the call goes by refcount.
        self.parser = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self.down.resume("upstream")
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.upstream_reusable and self.request_done and self.completing:
                self.pool.give_back(conn)
            else:
                conn.abort()
        rec = self.rec
        rec.finish()
        if self.started:
            self.relay.call_finished()
        self.relay.record(rec)
        if self.request_done or not keep_alive:
            self.down.call_done(self, keep_alive)
        # else: request_complete() hands the connection on once the request's last bytes are read

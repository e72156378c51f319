"""The byte-forwarding hot path, at the protocol level.

Profiling the aiohttp pass-through showed its cost was fixed per request and
spent in the framework (request and response objects, stream readers, one
coroutine step per chunk), not in moving bytes. So forwarding runs on raw
asyncio protocols: llhttp (through httptools) parses each side, bytes go
straight from one transport to the other, and the request body streams to the
upstream while it is still arriving. Connections whose first request targets
``/_cipx`` are handed, untouched, to the aiohttp app that serves the viewer,
metrics and admin API.

The only capture work here is appending references to a
:class:`~opik_cipx.capture.Recorder`; parsing, decoding, pricing and storage
happen later, off the request's critical path.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Callable, Iterable

import httptools

from .recorder import HeaderList, Recorder
from .upstream import Connection, Pool, UpstreamError

log = logging.getLogger(__name__)

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
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Content-Length stays on responses: bodies are relayed still encoded, so it stays true.
_RESPONSE_DROP = HOP_BY_HOP

ADMIN_PREFIX = b"/_cipx"
# A request head that never ends is refused rather than buffered without bound.
MAX_HEAD = 256 * 1024

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"

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
    reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large", 502: b"Bad Gateway",
              504: b"Gateway Timeout"}.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, reason, len(body), b"Connection: close\r\n" if close else b"")) + body


class Relay:
    """What every client connection shares: the upstream pool, the capture hooks, the admin app."""

    def __init__(
        self,
        pool: Pool,
        record: Callable[[Recorder], None],
        *,
        head_timeout: float,
        seal: Callable[[Recorder], None],
        admin: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        self.pool = pool
        # Receives each finished Recorder; must be cheap and must not raise (CaptureSink ensures both).
        self.record = record
        # Makes a complete call durable (the capture journal) before the bytes that complete
        # it reach the client; must not raise. Costs time-to-last-byte only.
        self.seal = seal
        self.head_timeout = head_timeout
        self.admin = admin  # builds the aiohttp protocol that serves /_cipx
        self.connections: set[Downstream] = set()
        self.closing = False
        self._idle_event = asyncio.Event()
        self.in_flight = 0  # calls being forwarded now
        # Told when the proxy goes from idle to busy and back: capture keeps off the CPU meanwhile.
        self.on_busy: Callable[[bool], None] | None = None

    def call_started(self) -> None:
        self.in_flight += 1
        if self.in_flight == 1 and self.on_busy is not None:
            self.on_busy(True)

    def call_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            if self.on_busy is not None:
                self.on_busy(False)
            if self.closing:
                self._idle_event.set()

    def protocol(self) -> Downstream:
        return Downstream(self)

    async def shutdown(self, grace: float) -> None:
        """Let calls in flight finish within ``grace``, then cut what is left; close idle connections."""
        self.closing = True
        for down in list(self.connections):
            if down.active is None:
                down.close()
        if self.in_flight:
            self._idle_event.clear()
            try:
                async with asyncio.timeout(grace):
                    while self.in_flight:
                        await self._idle_event.wait()
                        self._idle_event.clear()
            except TimeoutError:
                log.warning("shutdown: cutting %d calls still in flight after %.0fs", self.in_flight, grace)
        for down in list(self.connections):
            down.abort()
        self.pool.close()


class Downstream(asyncio.Protocol):
    """One client connection: parses its requests and runs them as calls, one at a time, in order."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.active: Call | None = None  # the call whose response is being sent
        self.parsing: Call | None = None  # the call whose request is being read
        self.queue: collections.deque[Call] = collections.deque()  # pipelined, waiting their turn
        self.in_message = False
        self.too_large = False
        self.head_size = 0
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._prefix = b""  # the first bytes of a request, until we know whether it is for /_cipx
        self._paused: set[str] = set()
        self.writing_paused = False  # the client reads slower than we write
        self.closed = False

    # asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.relay.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.in_message:
            if self._prefix:
                data, self._prefix = self._prefix + data, b""
            route = _route(data)
            if route is None:
                self._prefix = data  # too short to tell yet
                return
            if route == "admin" and self.active is None:
                self._hand_to_admin(data)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "opik-cipx: protocol upgrades and CONNECT are not forwarded")
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError) and not self.too_large:
                log.error("proxy: error handling a request", exc_info=exc)  # a bug here, not bad input
            if self.too_large:
                self._reject(431, f"opik-cipx: request head larger than {MAX_HEAD // 1024} KiB")
            else:
                self._reject(400, f"opik-cipx: malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        return None  # a client that stops sending has gone: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay.connections.discard(self)
        calls = [c for c in (self.active, *self.queue, self.parsing) if c is not None]
        self.active, self.parsing = None, None
        self.queue.clear()
        for call in dict.fromkeys(calls):
            call.client_lost()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.active is not None:
            self.active.client_paused(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.active is not None:
            self.active.client_paused(False)

    # httptools request callbacks ---------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.head_size = 0
        self._url = []
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            self._head_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD:
            self._head_too_large()

    def on_headers_complete(self) -> None:
        p = self.parser
        if p.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next: refused in data_received
        call = Call(self, p.get_method(), b"".join(self._url), self._headers,
                    http11=p.get_http_version() == "1.1", keep_alive=p.should_keep_alive())
        self.parsing = call
        if self.active is None:
            self.active = call
            call.start()
        else:
            # Pipelined: read now, forwarded in turn. Read no further until it is its turn.
            self.queue.append(call)
            self.pause("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        call, self.parsing = self.parsing, None
        if call is not None:
            call.request_complete()

    # flow -------------------------------------------------------------------------------
    def call_done(self, call: Call, keep_alive: bool) -> None:
        if call is not self.active:
            return
        self.active = None
        if not keep_alive or self.relay.closing or self.closed:
            self.close()
            return
        if self.queue:
            self.active = self.queue.popleft()
            self.active.start()
        if not self.queue:
            self.resume("pipeline")

    def pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _head_too_large(self) -> None:
        self.too_large = True
        raise ValueError("request head too large")  # stops the parser; data_received answers 431

    def _reject(self, status: int, message: str) -> None:
        log.warning("%s", message)
        if self.active is None:
            self.write(gateway_error(status, message, close=True, kind="invalid_request_error"))
            self.close()
        else:
            self.abort()

    def _hand_to_admin(self, data: bytes) -> None:
        """Give this connection, bytes read so far included, to the aiohttp app for good."""
        transport = self.transport
        if self.relay.admin is None or transport is None:
            self._reject(400, "opik-cipx: no admin endpoint here")
            return
        self.relay.connections.discard(self)
        self.closed = True
        proto = self.relay.admin()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(data)


def _route(data: bytes) -> str | None:
    """'admin' for a request line aimed at /_cipx, 'forward' for any other, None if too short to say."""
    space = data.find(b" ", 0, 24)
    if space < 0:
        # Not a method yet: wait for more, unless it is no method at all (the parser refuses it).
        return None if len(data) < 24 and data.isalpha() and data.isupper() else "forward"
    path = data[space + 1 : space + 1 + len(ADMIN_PREFIX) + 1]
    if len(path) <= len(ADMIN_PREFIX):
        return None if ADMIN_PREFIX.startswith(path) else "forward"
    return "admin" if path[:-1] == ADMIN_PREFIX and path[-1:] in (b"/", b" ", b"?") else "forward"


# How a response body is framed toward the client.
_NONE, _LENGTH, _CHUNKED, _RAW = range(4)


class Call:
    """One proxied request/response. Reads the request from the client and the response from the
    upstream (it is the upstream parser's protocol), and writes each side onward as it arrives."""

    __slots__ = (
        "down", "relay", "rec", "method", "target", "headers", "http11", "keep_alive",
        "request_done", "chunked_up", "conn", "parser", "connecting", "timer", "retried",
        "head_sent", "interim", "reason", "resp_headers", "mode", "remaining", "completing",
        "finished", "upstream_reusable", "expect_continue", "length", "answered", "until_close", "started",
        "out",
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
            self.down.write(_CONTINUE)
        conn = self.relay.pool.take()
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
            conn.transport.write(_LAST_CHUNK)
        if self.finished:
            # The response was over before the request: only now may the connection go on.
            self.down.call_done(self, self.keep_alive)

    def _request_head(self) -> bytes:
        target = self.relay.pool.target
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (self.method, target.request_target(self.target),
                                                      target.host_header),
                 header_block(end_to_end(self.headers, _REQUEST_DROP))]
        if self.chunked_up:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif self.length is not None:
            lines.append(b"Content-Length: %s\r\n" % self.length)
        lines.append(target.proxy_headers)
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _connect(self) -> None:
        try:
            conn = await self.relay.pool.open()
        except asyncio.CancelledError:
            raise
        except (OSError, UpstreamError, TimeoutError, ValueError) as exc:
            if not self.finished:
                self._fail(502, f"opik-cipx: cannot reach upstream {self.relay.pool.target.url}: "
                                f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.connecting = None
        if self.finished:
            self.relay.pool.give_back(conn)
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
                framed.append(_LAST_CHUNK)
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
        self.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
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
        drop = _RESPONSE_DROP if mode in (_NONE, _LENGTH) else _RESPONSE_DROP | {b"content-length"}
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
            self._complete(_LAST_CHUNK if self.mode == _CHUNKED else b"")

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
            self._fail(502, f"opik-cipx: upstream {self.relay.pool.target.url} closed the connection "
                            f"before responding{why}")
        elif self.until_close and exc is None:
            # A body without Content-Length or chunked framing ends with the connection.
            self._complete(_LAST_CHUNK if self.mode == _CHUNKED else b"")
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

    def client_lost(self) -> None:
        if self.finished:
            return
        self.rec.client_gone("client disconnected")
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
        self._fail(504, f"opik-cipx: upstream {self.relay.pool.target.url} sent no response within "
                        f"{self.relay.head_timeout:g}s")

    def _finish(self, *, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
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
                self.relay.pool.give_back(conn)
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

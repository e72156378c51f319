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
:class:`~opik_cipx.proxy.recorder.Recorder`; parsing, decoding, pricing and storage
happen later, off the request's critical path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

import httptools

from .call import Call
from .http import ADMIN_PREFIX, HOP_BY_HOP, MAX_HEAD, end_to_end, gateway_error, header_block
from .recorder import Recorder
from .routing import Upstream, route
from .upstream import Pool
from .websocket import Tunnel

log = logging.getLogger(__name__)

LINGER = 2.0  # seconds an error answer waits for the client to stop sending before we close

__all__ = ["HOP_BY_HOP", "Call", "Downstream", "Relay", "end_to_end", "gateway_error", "header_block"]



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
        upstreams: dict[Upstream, Pool] | None = None,
    ) -> None:
        self.pool = pool
        # Codex's upstreams beside Anthropic's (proxy/routing.py); WebSocket upgrades to them are
        # tunnelled (proxy/websocket.py) and tracked in ``tunnels`` for shutdown.
        self.upstreams = {Upstream.ANTHROPIC: pool, **(upstreams or {})}
        self.tunnels: set[Any] = set()
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

    def pick(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> Pool:
        return self.upstreams.get(route(target, headers), self.pool)

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
        for tunnel in list(self.tunnels):
            tunnel.abort()
        for pool in self.upstreams.values():
            pool.close()


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
        self._linger: asyncio.TimerHandle | None = None  # set while draining after an error answer

    # asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.relay.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return  # answered with an error already: read the rest only so it can be delivered
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
        except httptools.HttpParserUpgrade as upgrade:
            if not self._tunnel(data[upgrade.args[0] if upgrade.args else len(data):]):
                self._reject(501, "opik-cipx: protocol upgrades and CONNECT are not forwarded")
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError) and not self.too_large:
                log.error("proxy: error handling a request", exc_info=exc)  # a bug here, not bad input
            if self.too_large:
                self._reject(431, f"opik-cipx: request head larger than {MAX_HEAD // 1024} KiB")
            else:
                self._reject(400, f"opik-cipx: malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        return None  # a client that stops sending has gone (or read our error): connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
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
            self._close_lingering()
        else:
            self.abort()

    def _close_lingering(self) -> None:
        """Close after an error answer without losing it (RFC 9112 9.6).

        Closing at once while the client is still sending (the rest of a huge head, a body)
        makes the kernel reset the connection, and a reset can discard our answer before the
        client reads it. So: send FIN after the answer, read and drop what still arrives, and
        close when the client closes too, or after LINGER seconds at the latest.
        """
        transport = self.transport
        if transport is None or self.closed:
            return
        if not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(LINGER, self.close)
        if self._paused:  # nothing waits on what we read now: take it, so the client can finish
            self._paused.clear()
            transport.resume_reading()

    def _tunnel(self, rest: bytes) -> bool:
        """A WebSocket upgrade to an OpenAI upstream: hand the connection to a tunnel for good."""
        if self.active is not None or self.parser.get_method() != b"GET" or self.transport is None:
            return False
        target = b"".join(self._url)
        pool = self.relay.upstreams.get(route(target, self._headers))
        if pool is None or pool is self.relay.pool:
            return False  # Anthropic's API has no WebSocket: refused as before
        self.relay.connections.discard(self)
        self.closed = True
        Tunnel(self.relay, pool, self.transport, target, self._headers, rest).start()
        return True

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

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
from .client_limits import ClientLimits, Phase, overdue, to_evict
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
        limits: ClientLimits | None = None,
    ) -> None:
        self.pool = pool
        # Codex's upstreams beside Anthropic's (proxy/routing.py); WebSocket upgrades to them are
        # tunnelled (proxy/websocket.py) and tracked in ``tunnels`` for shutdown.
        self.upstreams = {Upstream.ANTHROPIC: pool, **(upstreams or {})}
        self.tunnels: set[Any] = set()
        self.limits = limits or ClientLimits()
        self._sweeper: asyncio.TimerHandle | None = None
        self.expired = 0  # client connections ended for overstaying a bound
        self.refused = 0  # client connections turned away at the cap
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

    def admit(self, down: Downstream) -> bool:
        """A new client connection: counted, and at the cap either room is made (the connection
        waiting longest without a call in progress goes) or the new one is refused."""
        if len(self.connections) >= self.limits.max_connections:
            others = list(self.connections)
            pick = to_evict([c.phase() for c in others], asyncio.get_running_loop().time(), self.limits)
            if pick is None:
                self.refused += 1
                return False
            others[pick].evict()
        self.connections.add(down)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.limits.sweep_every, self._sweep)
        return True

    def _sweep(self) -> None:
        """End each connection past a bound (see client_limits); runs while any are open."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for down in list(self.connections):
            phase, since = down.phase()
            why = overdue(phase, since, now, self.limits)
            if why is not None:
                down.expire(why)
        if self.connections and not self.closing:
            self._sweeper = asyncio.get_running_loop().call_later(self.limits.sweep_every, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Let calls in flight finish within ``grace``, then cut what is left; close idle connections."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
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
        # For the client-side bounds (client_limits): when the connection last went idle, when
        # the request head now being read began, when the client last sent anything.
        self._loop = asyncio.get_running_loop()
        self._idle_since = self._last_read = self._loop.time()
        self._head_since: float | None = None
        self._lost_why = "client disconnected"
        self.eof = False  # the client half-closed after complete requests: answer, then close
        self._served = False  # a call has run on this connection

    # asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.relay.admit(self):
            self.write(gateway_error(503, "opik-cipx: too many client connections; try again",
                                     close=True, kind="overloaded_error"))
            self._close_lingering()

    def data_received(self, data: bytes) -> None:
        self._last_read = now = self._loop.time()
        if self._head_since is None and not self.in_message:
            self._head_since = now  # the first bytes of a request: its head is on the clock
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
        """The client shut its sending side. After whole requests that is a valid way to say
        "no more" (``curl``, ``nc -N``, some SDKs): keep the connection open to answer them,
        then close. Mid-request, or with nothing to answer, the client has gone."""
        if self._linger is None and not self.in_message and not self._prefix and (self.active or self.queue):
            self.eof = True
            return True
        return None  # connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        self.relay.connections.discard(self)
        calls = [c for c in (self.active, *self.queue, self.parsing) if c is not None]
        self.active, self.parsing = None, None
        self.queue.clear()
        for call in dict.fromkeys(calls):
            call.client_lost(self._lost_why)

    # client-side bounds -------------------------------------------------------------------
    def phase(self) -> tuple[Phase, float]:
        """What this connection is doing, for its bounds, and since when."""
        if self._linger is not None or self.closed:
            return Phase.ENDING, self._last_read  # on its own timer already
        active = self.active
        if active is not None:
            if self.parsing is active and not self._paused and not self.eof:
                return Phase.BODY, self._last_read  # waiting on the client for the rest
            return Phase.BUSY, self._last_read
        if self.queue:
            return Phase.BUSY, self._last_read
        if self._head_since is not None:
            return Phase.HEAD, self._head_since
        return (Phase.IDLE if self._served else Phase.NEW), self._idle_since

    def expire(self, why: str) -> None:
        """End a connection that overstayed a bound: a head-reading one is told (408), an idle
        one closed quietly, one stalled mid-body cut (its call recorded as the client's doing)."""
        phase, _ = self.phase()
        self.relay.expired += 1
        log.info("proxy: ending a client connection: %s", why)
        if phase is Phase.HEAD:
            self.write(gateway_error(408, f"opik-cipx: {why}", close=True, kind="invalid_request_error"))
            self._close_lingering()
        elif phase is Phase.BODY:
            self._lost_why = f"client stalled: {why}"
            self.abort()
        else:
            self.close()

    def evict(self) -> None:
        """Make room at the connection cap: end this connection now, and stop counting it."""
        self.relay.connections.discard(self)
        self.relay.expired += 1
        if self.phase()[0] in (Phase.IDLE, Phase.NEW):
            self.close()  # between requests: a clean close the client's pool expects
        else:
            self.abort()  # a head that is taking too long, or an error answer being lingered on

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
        if self._head_since is None:
            self._head_since = self._loop.time()  # a pipelined request, in the same read
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
        self._head_since = None
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
        if not keep_alive or self.relay.closing or self.closed or (self.eof and not self.queue):
            self.close()
            return
        self._served = True
        if self.queue:
            self.active = self.queue.popleft()
            self.active.start()
        else:
            self._idle_since = self._loop.time()
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
                self._last_read = self._loop.time()  # the client's clock restarts now, not before
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

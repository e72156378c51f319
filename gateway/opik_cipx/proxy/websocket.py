"""A WebSocket upgrade relayed as a byte tunnel, each Responses turn on it noted as a call.

Codex opens ``GET /v1/responses`` with ``Upgrade: websocket``. The relay hands such a
connection here for good: the request head goes upstream with only ``Host`` rewritten (the
client's ``Sec-WebSocket-*`` offer, ``permessage-deflate`` included, passes as is, so the two
ends negotiate with each other), and from then on bytes cross both ways as they arrive,
unbuffered and unmodified. The upstream's answer decides what happens: 101 makes it a tunnel,
anything else is relayed as an HTTP answer, counted, and the connection closed.

Capture never touches the forwarded bytes: copies go to a :class:`~opik_cipx.wire.websocket.MessageReader`
per direction, scheduled after the write (``call_soon``) so the frame parsing and inflating
runs after the bytes are on their way. Each client ``response.create`` message starts a
:class:`Recorder` (method ``WEBSOCKET``); the server's JSON messages are its chunks until a
terminal event (``response.completed``, ``.failed``, ``.incomplete``, ``error``) seals and
records it. A bug in that capture path is logged once and capture stops for this connection:
the tunnel keeps relaying.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from typing import TYPE_CHECKING

import httptools

from ..wire.websocket import MessageReader, parse_extensions
from .http import gateway_error, header_block
from .recorder import HeaderList, Recorder
from .upstream import Connection, Pool, UpstreamError

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger(__name__)

METHOD = "WEBSOCKET"  # the Recorder method of one turn on a tunnel (see model.classify)
TERMINAL = frozenset({b"response.completed", b"response.failed", b"response.incomplete", b"error"})
_TYPE = re.compile(rb'"type"\s*:\s*"([^"]{1,64})"')


def event_type(payload: bytes) -> bytes | None:
    """The ``type`` of a Responses JSON event, read from its first bytes without parsing it all."""
    found = _TYPE.search(payload, 0, 160)
    return found.group(1) if found else None


def _header(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.strip(), value.strip()


class _ClientSide(asyncio.Protocol):
    """The client's transport after the handover: everything it says goes to the tunnel."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_client(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.client_lost(exc)

    def pause_writing(self) -> None:
        self.tunnel.client_paused(True)

    def resume_writing(self) -> None:
        self.tunnel.client_paused(False)


class Tunnel:
    """One upgraded client connection and its upstream connection."""

    def __init__(self, relay: Relay, pool: Pool, client: asyncio.Transport, target: bytes,
                 headers: list[tuple[bytes, bytes]], early: bytes) -> None:
        self.relay = relay
        self.pool = pool
        self.client = client
        self.target = target
        self.headers = headers
        self.path = target.decode("latin-1")
        self.conn: Connection | None = None
        self.pending: list[bytes] = [early] if early else []  # client bytes before upstream is up
        self.closed = False
        self.upgraded = False
        self._head = bytearray()  # the upstream's answer head, until it is whole
        self._answer: Recorder | None = None  # a non-101 answer, relayed as one HTTP call
        self._parser: httptools.HttpResponseParser | None = None
        self._upgrade_headers: tuple[tuple[bytes, bytes], ...] = ()
        self._readers: tuple[MessageReader, MessageReader] | None = None
        self._turns: collections.deque[Recorder] = collections.deque()
        self.capturing = True
        self.turns = 0  # turns recorded on this connection

    # -- setup --------------------------------------------------------------------------
    def start(self) -> None:
        proto = _ClientSide(self)
        self.client.set_protocol(proto)
        self.client.pause_reading()  # nothing for the upstream until it is connected
        self.relay.tunnels.add(self)
        asyncio.get_running_loop().create_task(self._connect())

    def _request_head(self) -> bytes:
        target = self.pool.target
        kept = [(n, v) for n, v in self.headers if n.lower() not in (b"host", b"proxy-connection")]
        return (b"GET %s HTTP/1.1\r\nHost: %s\r\n" % (target.request_target(self.target), target.host_header)
                + header_block(kept) + target.proxy_headers + b"\r\n")

    async def _connect(self) -> None:
        try:
            conn = await self.pool.open()
        except (OSError, UpstreamError, TimeoutError, ValueError) as exc:
            message = f"opik-cipx: cannot reach upstream {self.pool.target.url}: {type(exc).__name__}: {exc}"
            rec = Recorder("GET", self.path, HeaderList(self.headers))
            rec.unreachable(502, message)
            rec.finish()
            self.relay.record(rec)
            if not self.closed:
                self.client.write(gateway_error(502, message, close=True))
                self.close()
            return
        if self.closed:
            conn.abort()
            return
        self.conn = conn
        conn.owner = self
        assert conn.transport is not None
        conn.transport.writelines([self._request_head(), *self.pending])
        self.pending = []
        self.client.resume_reading()

    # -- bytes from the client ------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.transport is None:
            self.pending.append(data)
            return
        conn.transport.write(data)
        if self.upgraded and self.capturing:
            asyncio.get_running_loop().call_soon(self._tap, 0, data)

    def client_paused(self, paused: bool) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.closed:
            (conn.transport.pause_reading if paused else conn.transport.resume_reading)()

    def client_lost(self, exc: Exception | None) -> None:
        # After the taps already queued: a turn whose last event is still in the queue completes.
        asyncio.get_running_loop().call_soon(self._end, True, exc)

    # -- bytes from the upstream (Connection owner protocol) ---------------------------------
    def upstream_data(self, data: bytes) -> None:
        if self.closed:
            return
        self.client.write(data)  # first: whatever capture makes of it, the client has it
        if self.upgraded:
            if self.capturing:
                asyncio.get_running_loop().call_soon(self._tap, 1, data)
        elif self._parser is not None:
            self._answer_data(data)
        else:
            self._head_data(data)

    def upstream_paused(self, paused: bool) -> None:
        if not self.closed:
            (self.client.pause_reading if paused else self.client.resume_reading)()

    def upstream_lost(self, exc: Exception | None) -> None:
        asyncio.get_running_loop().call_soon(self._end, False, exc)

    # -- the handshake answer -----------------------------------------------------------------
    def _head_data(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > 256 * 1024:
                self.capturing = False  # not HTTP: relay blindly
                self.upgraded = True
            return
        head, rest = bytes(self._head[:end + 4]), bytes(self._head[end + 4:])
        self._head = bytearray()
        status_line, _, raw_headers = head.partition(b"\r\n")
        fields = status_line.split(b" ", 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        headers = tuple(_header(line) for line in raw_headers.split(b"\r\n") if b":" in line)
        if status == 101:
            self.upgraded = True
            self._upgrade_headers = headers
            self._start_capture(headers)
            if rest and self.capturing:
                asyncio.get_running_loop().call_soon(self._tap, 1, rest)
            return
        # Refused (426, 404, ...): relay it as the HTTP answer it is, recorded, then close.
        self._answer = Recorder("GET", self.path, HeaderList(self.headers))
        self._parser = httptools.HttpResponseParser(self)
        self._answer_data(head + rest)

    def _answer_data(self, data: bytes) -> None:
        try:
            assert self._parser is not None
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    # httptools callbacks for a refused upgrade's answer
    def on_headers_complete(self) -> None:
        assert self._parser is not None and self._answer is not None
        self._answer.response_head(self._parser.get_status_code(), ())

    def on_body(self, body: bytes) -> None:
        if self._answer is not None:
            self._answer.chunk(body)

    def on_message_complete(self) -> None:
        rec, self._answer = self._answer, None
        if rec is not None:
            self.relay.seal(rec)
            rec.finish()
            self.relay.record(rec)
        self.close()

    # -- capture -------------------------------------------------------------------------------
    def _start_capture(self, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        ext = b", ".join(v for n, v in headers if n.lower() == b"sec-websocket-extensions").decode("latin-1")
        self._readers = (MessageReader(parse_extensions(ext, server_sends=False)),
                         MessageReader(parse_extensions(ext, server_sends=True)))

    def _tap(self, side: int, data: bytes) -> None:
        """Capture's copy of bytes already forwarded: 0 from the client, 1 from the upstream."""
        if not self.capturing or self._readers is None:
            return
        try:
            reader = self._readers[side]
            for msg in reader.feed(data):
                if msg.opcode == 0x1:
                    (self._client_message if side == 0 else self._server_message)(msg.payload)
            if reader.broken is not None:
                log.warning("websocket capture stopped on %s: %s", self.path, reader.broken)
                self.capturing = False
        except Exception:  # a capture bug must never break the tunnel
            log.exception("websocket capture failed on %s; relaying without it", self.path)
            self.capturing = False

    def _client_message(self, payload: bytes) -> None:
        if event_type(payload) != b"response.create":
            return  # e.g. a cancel: no turn of its own
        rec = Recorder(METHOD, self.path, HeaderList(self.headers))
        rec.body = payload
        rec.response_head(101, self._upgrade_headers)
        rec.t_head = None  # set by the first server event of this turn
        self._turns.append(rec)
        self.relay.call_started()

    def _server_message(self, payload: bytes) -> None:
        if not self._turns:
            return  # unsolicited: nothing to add it to
        rec = self._turns[0]
        rec.chunk(payload)
        if rec.t_head is None:
            rec.t_head = rec.times[-1]
        if event_type(payload) in TERMINAL:
            self._turns.popleft()
            self.relay.seal(rec)
            rec.finish()
            self.turns += 1
            self.relay.call_finished()
            self.relay.record(rec)

    # -- endings --------------------------------------------------------------------------------
    def _end(self, client_gone: bool, exc: Exception | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.relay.tunnels.discard(self)
        while self._turns:
            rec = self._turns.popleft()
            if client_gone:
                rec.client_gone("client closed the WebSocket mid-turn")
            else:
                rec.upstream_broke(f"upstream closed the WebSocket mid-turn: {exc or 'closed'}")
            rec.finish()
            self.relay.call_finished()
            self.relay.record(rec)
        if self._answer is not None:
            rec, self._answer = self._answer, None
            rec.upstream_broke("upstream closed before its answer to the upgrade was whole")
            rec.finish()
            self.relay.record(rec)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self.client.close()

    def close(self) -> None:
        self._end(False)

    def abort(self) -> None:
        self.client.abort()
        self._end(False)

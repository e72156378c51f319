"""Read WebSocket frames (RFC 6455) out of a relayed byte stream, for capture only.

The relay forwards a WebSocket's bytes untouched; a :class:`MessageReader` per direction is
fed copies of them and hands back whole messages: fragments joined, masks removed and
``permessage-deflate`` (RFC 7692) inflated, with the compression context kept across
messages unless the handshake turned context takeover off. Sans-IO and pure: bytes in,
:class:`Message` s out. Nothing here raises on what the peers sent: a stream that stops
making sense ends the reader (``broken`` says why) and the relay goes on regardless.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: stripped by the sender, appended back to inflate
MAX_MESSAGE = 256 * 1024 * 1024  # a capture copy larger than this is given up, not buffered


@dataclass(frozen=True, slots=True)
class Deflate:
    """What the handshake agreed for one direction: whether this sender resets its context."""

    no_context_takeover: bool = False


def parse_extensions(header: str, *, server_sends: bool) -> Deflate | None:
    """The permessage-deflate terms for one direction from a ``Sec-WebSocket-Extensions`` answer.

    ``server_sends`` picks the direction: the server's frames obey ``server_no_context_takeover``,
    the client's ``client_no_context_takeover``. None when the extension was not agreed.
    """
    for offer in header.split(","):
        parts = [p.strip().lower() for p in offer.split(";")]
        if parts[0] != "permessage-deflate":
            continue
        params = {p.split("=", 1)[0].strip() for p in parts[1:] if p}
        key = "server_no_context_takeover" if server_sends else "client_no_context_takeover"
        return Deflate(no_context_takeover=key in params)
    return None


@dataclass(frozen=True, slots=True)
class Message:
    opcode: int  # TEXT, BINARY, CLOSE, PING or PONG
    payload: bytes  # unmasked and inflated
    compressed: bool  # arrived deflated (RSV1 set on its first frame)
    wire_size: int  # bytes it took on the wire, frame headers included


class MessageReader:
    """Incremental frame parser for one direction of a WebSocket connection."""

    def __init__(self, deflate: Deflate | None = None) -> None:
        self.deflate = deflate
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0
        self._compressed = False
        self._wire = 0
        self._inflater: zlib._Decompress | None = None
        self.broken: str | None = None

    def feed(self, data: bytes) -> list[Message]:
        if self.broken is not None:
            return []
        self._buf += data
        out: list[Message] = []
        try:
            while self._frame(out):
                pass
        except (zlib.error, ValueError) as exc:
            self.broken = f"{type(exc).__name__}: {exc}"
            self._buf.clear()
            self._parts.clear()
        return out

    def _frame(self, out: list[Message]) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        b0, b1 = buf[0], buf[1]
        fin, rsv1, opcode = b0 & 0x80, b0 & 0x40, b0 & 0x0F
        masked, length = b1 & 0x80, b1 & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return False
            length, pos = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return False
            length, pos = int.from_bytes(buf[2:10], "big"), 10
        if length > MAX_MESSAGE:
            raise ValueError(f"frame of {length} bytes")
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return False
            mask, pos = bytes(buf[pos:pos + 4]), pos + 4
        end = pos + length
        if len(buf) < end:
            return False
        payload = bytes(buf[pos:end])
        del buf[:end]
        if mask:
            payload = _unmask(payload, mask)
        if opcode >= 0x8:  # control frames are never fragmented nor compressed
            out.append(Message(opcode, payload, False, end))
            return True
        if opcode != CONTINUATION:
            if self._parts:
                raise ValueError("a new message began inside a fragmented one")
            self._opcode, self._compressed, self._wire = opcode, bool(rsv1), 0
        elif not self._parts and self._opcode == 0:
            raise ValueError("continuation frame without a message")
        self._parts.append(payload)
        self._wire += end
        if sum(map(len, self._parts)) > MAX_MESSAGE:
            raise ValueError("message too large to capture")
        if fin:
            body = b"".join(self._parts)
            self._parts = []
            if self._compressed:
                body = self._inflate(body)
            out.append(Message(self._opcode, body, self._compressed, self._wire))
            self._opcode = 0
        return True

    def _inflate(self, body: bytes) -> bytes:
        if self._inflater is None or (self.deflate is not None and self.deflate.no_context_takeover):
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._inflater.decompress(body + _TAIL)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: far faster in CPython than a byte loop.
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")

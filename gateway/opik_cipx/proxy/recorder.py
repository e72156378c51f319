"""What the hot path keeps of one call: its bytes and a few timestamps.

The relay appends to a :class:`Recorder` as bytes pass; nothing here parses or
can raise. Capture turns a finished Recorder into an Exchange later, off the
request's critical path (``opik_cipx.capture``).

A response is kept as one growing buffer, with where each piece ended and when it
came in two arrays of machine numbers, not as a list of ``bytes`` and ``float``
objects: a long stream arrives in tens of thousands of small reads (one SSE event
each), and as objects each piece cost about 100 bytes of headers beside its few
dozen bytes of data, scattered over CPython's small-object arenas, which a
process can rarely give back once they are fragmented.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Iterator
from typing import Any

from ..model import Outcome


class HeaderList:
    """Request headers as the proxy read them: ``items()`` in wire order, duplicates kept.

    Holds the raw bytes; decoding (latin-1, which maps bytes 1:1) waits until capture
    asks, off the hot path.
    """

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> None:
        self._items = items

    def raw(self) -> list[tuple[bytes, bytes]] | list[tuple[str, str]]:
        """The items as held: bytes as read off the wire (str only in tests and old journals)."""
        return self._items

    def items(self) -> list[tuple[str, str]]:
        return [(_text(n), _text(v)) for n, v in self._items]


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _new_id() -> str:
    """A random (version 4) UUID's hex: uuid.uuid4().hex without building the UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


# Offsets into one call's response: 64 bits, so that appending can never overflow.
ENDS_TYPE = "Q"


class Recorder:
    """Hot-path notes about one call. Methods are O(1) and cannot fail."""

    __slots__ = (
        "body_parts",
        "ends",
        "error",
        "forced_outcome",
        "frame",
        "gateway_status",
        "id",
        "journaled",
        "method",
        "path",
        "released",
        "request_headers",
        "response",
        "response_headers",
        "status",
        "t_end",
        "t_head",
        "t_start",
        "times",
        "wall_start",
    )

    def __init__(self, method: str, path: str, request_headers: Any) -> None:
        self.t_start = time.perf_counter()
        self.wall_start = time.time()
        self.id = _new_id()
        self.method = method
        self.path = path
        self.request_headers = request_headers  # a HeaderList; items() in wire order
        # The request body as read off the wire; joined only when something needs it whole.
        self.body_parts: list[bytes] = []
        self.status: int | None = None
        self.response_headers: tuple[tuple[bytes, bytes], ...] = ()
        self.t_head: float | None = None
        # The response body as it passed, the offset in it where each piece read ended, and
        # when each piece came (perf_counter): piece i is response[ends[i - 1]:ends[i]].
        self.response = bytearray()
        self.ends = array(ENDS_TYPE)
        self.times = array("d")
        self.t_end: float | None = None
        self.forced_outcome: Outcome | None = None
        self.error: str | None = None
        self.gateway_status: int | None = None
        # Where the journal wrote this call: (offset, length). The capture worker reads it from
        # there, so the parent never pipes the bodies a second time.
        self.frame: tuple[int, int] | None = None
        self.journaled = False  # sealed into the journal before its response completed
        self.released = False  # the bytes were dropped from memory: only the journal has them

    def response_head(self, status: int, raw_headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.t_head = time.perf_counter()
        self.status = status
        self.response_headers = raw_headers

    def chunk(self, data: bytes) -> None:
        response = self.response
        response += data
        self.ends.append(len(response))
        self.times.append(time.perf_counter())

    def pieces(self) -> Iterator[bytes]:
        """The response's pieces as they were read, one copy at a time: for capture, of a
        finished call (until the iteration ends, the buffer cannot grow)."""
        start = 0
        with memoryview(self.response) as view:
            for end in self.ends:
                yield bytes(view[start:end])
                start = end

    @property
    def chunks(self) -> list[bytes]:
        """The response's pieces as they were read (copies; for capture, off the hot path)."""
        return list(self.pieces())

    @chunks.setter
    def chunks(self, parts: list[bytes]) -> None:
        """Replace the response with ``parts`` (replay and tests); ``times`` is the caller's to set."""
        self.response = bytearray()
        self.ends = array(ENDS_TYPE)
        for part in parts:
            self.response += part
            self.ends.append(len(self.response))

    def unreachable(self, gateway_status: int, message: str) -> None:
        self.forced_outcome = Outcome.UNREACHABLE
        self.gateway_status = gateway_status
        self.error = message

    def upstream_broke(self, message: str) -> None:
        self.forced_outcome = Outcome.TRUNCATED
        self.error = message

    def client_gone(self, message: str) -> None:
        if self.forced_outcome is None:
            self.forced_outcome = Outcome.CLIENT_GONE
            self.error = message

    def finish(self) -> None:
        if self.t_end is None:
            self.t_end = time.perf_counter()

    def release(self) -> None:
        """Drop the bytes: the journal holds them (``frame``) and capture reads them from there."""
        self.body_parts = []
        self.response = bytearray()
        self.ends = array(ENDS_TYPE)
        self.times = array("d")
        self.released = True

    @property
    def body(self) -> bytes:
        parts = self.body_parts
        if len(parts) == 1:
            return parts[0]
        joined = b"".join(parts)
        self.body_parts = [joined]
        return joined

    @body.setter
    def body(self, value: bytes) -> None:
        self.body_parts = [value]

    @property
    def size(self) -> int:
        """Bytes this recorder keeps alive: the request body and the response chunks."""
        return sum(map(len, self.body_parts)) + len(self.response)


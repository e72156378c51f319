"""Incremental, sans-IO decoder for ``text/event-stream`` bodies.

Follows the WHATWG "event stream interpretation" rules: lines end in ``\\r\\n``,
``\\n`` or a lone ``\\r``; a blank line dispatches the event; ``:`` starts a
comment; one leading space after the field colon is dropped; one leading BOM is
ignored. It is fed arbitrary byte chunks (split mid-line, mid-UTF-8 sequence,
between ``\\r`` and ``\\n``) and never raises on what it is fed.

Lines are split on bytes and decoded one at a time: CR and LF are ASCII and
never occur inside a multi-byte UTF-8 sequence, so a line is always a whole
unit of text and invalid bytes become U+FFFD without an incremental decoder.
Every byte is scanned once (the scan resumes where the last one stopped), so a
body of any size, fed in chunks of any size, costs linear time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event."""

    event: str  # "message" when the stream gave no event: field
    data: str  # data: lines joined with "\n"
    id: str | None = None  # the last event id seen so far (it persists across events)


class SSEDecoder:
    """Turns byte chunks into :class:`SSEEvent` objects as soon as they are complete."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for a line end
        self._bom_pending = True  # the stream start has not been checked for a BOM yet
        # A chunk ended right after "\r": if the next byte is "\n" it belongs to the same line end.
        self._skip_lf = False
        self._event_type = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._closed = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume ``data``; return the events it completed."""
        if self._closed or not data:
            return []
        self._buf += data
        if self._bom_pending:
            if len(self._buf) < len(_BOM) and _BOM.startswith(bytes(self._buf)):
                return []  # could still be a BOM split across chunks
            self._drop_bom()
        return self._drain()

    def close(self) -> list[SSEEvent]:
        """End of stream: flush a last line and event that were never terminated.

        The WHATWG rules discard such an event; we keep it because a capture of a cut
        stream is worth more with its final frame than without it.
        """
        if self._closed:
            return []
        self._closed = True
        if self._bom_pending:
            self._drop_bom()
        events = self._drain()
        if self._buf:
            self._line(bytes(self._buf), events)
            self._buf.clear()
        self._dispatch(events)
        return events

    def _drop_bom(self) -> None:
        self._bom_pending = False
        if self._buf.startswith(_BOM):
            del self._buf[: len(_BOM)]

    def _drain(self) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buf = self._buf
        if self._skip_lf and buf:
            self._skip_lf = False
            if buf[0] == 0x0A:
                del buf[:1]
        start = 0
        pos = self._scanned
        while True:
            match = _EOL.search(buf, pos)
            if match is None:
                break
            end = match.start()
            self._line(bytes(buf[start:end]), events)
            nxt = end + 1
            if buf[end] == 0x0D:
                if nxt < len(buf):
                    if buf[nxt] == 0x0A:
                        nxt += 1
                else:
                    self._skip_lf = True
            start = pos = nxt
        # Deleting from the front of a bytearray only moves its start pointer, so this
        # stays cheap however long the remaining partial line is.
        del buf[:start]
        self._scanned = len(buf)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            self._dispatch(events)
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id" and "\0" not in value:  # an id with NUL is ignored, as the spec says
            self._last_id = value
        # "retry" and unknown fields are ignored: reconnection is not ours to do.

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(SSEEvent(self._event_type or "message", "\n".join(self._data), self._last_id))
        self._data = []
        self._event_type = ""

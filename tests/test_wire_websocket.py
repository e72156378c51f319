"""WebSocket frames read back for capture: masks, fragments, control frames, permessage-deflate."""

from __future__ import annotations

import os
import zlib

from opik_cipx.wire.websocket import BINARY, CONTINUATION, PING, TEXT, Deflate, MessageReader, parse_extensions


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, mask: bytes | None = None) -> bytes:
    head = bytearray([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return bytes(head) + payload


def deflate_stream() -> zlib._Compress:
    return zlib.compressobj(wbits=-15)


def compressed(comp: zlib._Compress, data: bytes) -> bytes:
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_masked_fragmented_text_with_a_ping_between_fragments() -> None:
    mask = b"\x01\x02\x03\x04"
    wire = (frame(TEXT, b'{"type":', fin=False, mask=mask) + frame(PING, b"p", mask=mask)
            + frame(CONTINUATION, b'"response.create"}', mask=mask))
    reader = MessageReader()
    got = [m for i in range(len(wire)) for m in reader.feed(wire[i:i + 1])]  # byte by byte
    assert [(m.opcode, m.payload) for m in got] == [(PING, b"p"), (TEXT, b'{"type":"response.create"}')]
    assert got[1].wire_size == len(wire) - len(frame(PING, b"p", mask=mask))


def test_deflate_with_context_takeover_across_messages_and_long_lengths() -> None:
    comp = deflate_stream()
    first, second = b'{"a":"' + b"x" * 70000 + b'"}', b'{"a":"' + b"x" * 300 + b'"}'
    wire = frame(TEXT, compressed(comp, first), rsv1=True) + frame(TEXT, compressed(comp, second), rsv1=True)
    reader = MessageReader(Deflate())
    got = reader.feed(wire)
    assert [m.payload for m in got] == [first, second] and all(m.compressed for m in got)
    assert reader.broken is None


def test_no_context_takeover_resets_each_message() -> None:
    wire = b"".join(frame(TEXT, compressed(deflate_stream(), b"hello hello"), rsv1=True) for _ in range(2))
    got = MessageReader(Deflate(no_context_takeover=True)).feed(wire)
    assert [m.payload for m in got] == [b"hello hello"] * 2


def test_garbage_breaks_the_reader_without_raising() -> None:
    reader = MessageReader()
    assert reader.feed(frame(CONTINUATION, b"x")) == []
    assert reader.broken is not None
    assert reader.feed(frame(BINARY, os.urandom(10))) == []  # stays stopped


def test_parse_extensions_per_direction() -> None:
    agreed = "permessage-deflate; server_no_context_takeover; client_max_window_bits=15"
    assert parse_extensions(agreed, server_sends=True) == Deflate(no_context_takeover=True)
    assert parse_extensions(agreed, server_sends=False) == Deflate(no_context_takeover=False)
    assert parse_extensions("", server_sends=True) is None

"""SSEDecoder: WHATWG event-stream framing under any chunking, never raising."""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.wire import sse
from opik_cipx.wire.sse import SSEDecoder, SSEEvent


def decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


SAMPLE = (
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n'
    b"\n"
    b": keep-alive comment\n"
    b"event: ping\n"
    b"data: {}\n"
    b"\n"
    b"data: line one\n"
    b"data: line two\n"
    b"id: 42\n"
    b"\n"
    b"event: content_block_delta\n"
    b'data: {"text":"h\xc3\xa9llo \xe2\x9c\x93"}\n'
    b"\n"
)
SAMPLE_EVENTS = [
    SSEEvent("message_start", '{"type":"message_start"}'),
    SSEEvent("ping", "{}"),
    SSEEvent("message", "line one\nline two", "42"),
    SSEEvent("content_block_delta", '{"text":"héllo ✓"}', "42"),
]


def test_events_are_named_and_default_to_message() -> None:
    assert decode_all([SAMPLE]) == SAMPLE_EVENTS


def test_events_dispatch_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("a", "1")]
    assert decoder.close() == []


def test_byte_by_byte_feeding_gives_the_same_events() -> None:
    assert decode_all([bytes([b]) for b in SAMPLE]) == SAMPLE_EVENTS


def test_crlf_and_lone_cr_line_endings_are_equivalent_to_lf() -> None:
    crlf = SAMPLE.replace(b"\n", b"\r\n")
    cr = SAMPLE.replace(b"\n", b"\r")
    assert decode_all([crlf]) == SAMPLE_EVENTS
    assert decode_all([cr]) == SAMPLE_EVENTS
    assert decode_all([bytes([b]) for b in crlf]) == SAMPLE_EVENTS


def test_crlf_split_between_chunks_is_one_line_end_not_a_blank_line() -> None:
    # Were the "\n" taken as a blank line, "a" would be dispatched on its own.
    events = decode_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [SSEEvent("message", "a\nb")]


def test_mixed_line_endings_in_one_stream() -> None:
    events = decode_all([b"data: a\rdata: b\ndata: c\r\n\n", b"event: x\r\rdata: y\n\r\n"])
    assert events == [SSEEvent("message", "a\nb\nc"), SSEEvent("message", "y")]


def test_only_one_leading_space_is_stripped_from_values() -> None:
    events = decode_all([b"data:x\n\ndata:  two spaces\n\ndata: a: b\n\n"])
    assert [e.data for e in events] == ["x", " two spaces", "a: b"]


def test_field_without_colon_has_an_empty_value() -> None:
    events = decode_all([b"data\ndata\n\n"])
    assert events == [SSEEvent("message", "\n")]


def test_event_without_data_is_not_dispatched_and_its_name_does_not_leak() -> None:
    events = decode_all([b"event: lonely\n\ndata: next\n\n"])
    assert events == [SSEEvent("message", "next")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    events = decode_all([b": hello\nretry: 1000\nfoo: bar\ndata: ok\n:bye\n\n"])
    assert events == [SSEEvent("message", "ok")]


def test_id_persists_and_an_id_with_nul_is_ignored() -> None:
    events = decode_all([b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x00x\ndata: c\n\nid\ndata: d\n\n"])
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1"), ("c", "1"), ("d", "")]


def test_leading_bom_is_dropped_even_when_split_across_chunks() -> None:
    body = b"\xef\xbb\xbfdata: x\n\n"
    assert decode_all([body]) == [SSEEvent("message", "x")]
    assert decode_all([body[:1], body[1:2], body[2:]]) == [SSEEvent("message", "x")]


def test_only_the_first_bom_is_dropped() -> None:
    events = decode_all([b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"])
    # The second BOM makes the field name "\ufeffdata", an unknown field.
    assert events == []


def test_partial_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    assert decode_all([b"\xef", b"data: x\n\n"]) == []  # "\ufffddata" is an unknown field
    assert decode_all([b"\xef"]) == []


def test_utf8_sequence_split_across_chunks_decodes_whole() -> None:
    body = "data: é✓😀\n\n".encode()
    for cut in range(len(body) + 1):
        assert decode_all([body[:cut], body[cut:]]) == [SSEEvent("message", "é✓😀")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    events = decode_all([b"data: a\xff\xfeb\xc3\n\nevent: \x80\ndata: z\n\n"])
    assert events == [SSEEvent("message", "a\ufffd\ufffdb\ufffd"), SSEEvent("\ufffd", "z")]


def test_close_flushes_an_event_not_terminated_by_a_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: message_stop\ndata: {}") == []
    assert decoder.close() == [SSEEvent("message_stop", "{}")]
    assert decoder.close() == []
    assert decoder.feed(b"data: late\n\n") == []


def test_close_flushes_an_event_whose_last_line_ended() -> None:
    assert decode_all([b"data: a\r"]) == [SSEEvent("message", "a")]


def test_empty_stream_has_no_events() -> None:
    assert decode_all([]) == []
    assert decode_all([b"", b""]) == []


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40), crlf=st.booleans())
def test_any_chunking_gives_the_same_events(cuts: list[int], crlf: bool) -> None:
    body = SAMPLE.replace(b"\n", b"\r\n") if crlf else SAMPLE
    assert decode_all(split_at(body, cuts)) == SAMPLE_EVENTS


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_arbitrary_bytes_never_raise_and_chunking_does_not_matter(body: bytes, cuts: list[int]) -> None:
    whole = decode_all([body])
    assert decode_all(split_at(body, cuts)) == whole
    assert all(isinstance(e.data, str) and isinstance(e.event, str) for e in whole)


class CountingPattern:
    """Stands in for the line-end regex and counts how many bytes the decoder makes it scan."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def search(self, buf: bytearray, pos: int) -> re.Match[bytes] | None:
        match = self.pattern.search(buf, pos)
        self.scanned += (match.end() if match else len(buf)) - pos
        return match


def test_each_byte_is_scanned_once_however_small_the_chunks(monkeypatch) -> None:
    counter = CountingPattern(sse._EOL)
    monkeypatch.setattr(sse, "_EOL", counter)
    long_line = b"data: " + b"x" * 200_000 + b"\n\n"
    body = long_line + b"event: a\ndata: b\n\n" * 1000
    events = decode_all([body[i : i + 7] for i in range(0, len(body), 7)])
    assert len(events) == 1001
    assert len(events[0].data) == 200_000
    assert counter.scanned <= len(body)


def test_five_megabyte_stream_in_small_chunks_is_linear_time() -> None:
    frame = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0}\n\n'
    body = b"data: " + b"y" * 2_500_000 + b"\n\n" + frame * (2_500_000 // len(frame))
    assert len(body) >= 4_900_000
    started = time.perf_counter()
    events = decode_all([body[i : i + 512] for i in range(0, len(body), 512)])
    elapsed = time.perf_counter() - started
    assert len(events) == 1 + 2_500_000 // len(frame)
    # Rescanning the 2.5 MB line per 512-byte chunk would be ~6 GB of work: minutes, not seconds.
    assert elapsed < 10, elapsed

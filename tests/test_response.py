"""Reading Anthropic responses: streams, JSON bodies, errors and content encodings."""

from __future__ import annotations

import gzip
import json
import random
import time
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.model import Outcome
from opik_cipx.wire.response import (
    ResponseSummary,
    StreamReader,
    decode_content,
    read_json_response,
    read_response,
)

# --- a small builder for realistic Anthropic SSE bodies ---------------------------------


def frame(event: str, data: dict[str, Any] | str, *, name: bool = True) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if name else ""
    return f"{head}data: {payload}\n\n".encode()


def message_start(usage: dict[str, Any], model: str = "claude-opus-4-5-20251101") -> bytes:
    message = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return frame("message_start", {"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return frame("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def block_stop(index: int) -> bytes:
    return frame("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(usage: dict[str, Any], stop_reason: str | None = "end_turn") -> bytes:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return frame("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})


PING = frame("ping", {"type": "ping"})
STOP = frame("message_stop", {"type": "message_stop"})
OVERLOADED = frame("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})

START_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 41000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 1,
    "service_tier": "standard",
    "inference_geo": "us",
}
TOOL_INPUT = {"command": "ls -la /tmp", "description": "List files — quoted \"here\"", "timeout": 1200}
TOOL_JSON = json.dumps(TOOL_INPUT, ensure_ascii=False)


def full_stream() -> list[bytes]:
    """A tool-using, thinking, web-searching turn as the API streams it, one frame per entry."""
    frames = [message_start(START_USAGE), PING]
    frames += [block_start(0, {"type": "thinking", "thinking": "", "signature": ""})]
    frames += [block_delta(0, {"type": "thinking_delta", "thinking": t}) for t in ("Let me ", "look ", "around.")]
    frames += [block_delta(0, {"type": "signature_delta", "signature": "EqQBCkYIARgCIkB"}), block_stop(0), PING]
    frames += [block_start(1, {"type": "text", "text": ""})]
    frames += [block_delta(1, {"type": "text_delta", "text": t}) for t in ("I'll ", "run ", "ls. ✓")]
    frames += [block_stop(1)]
    frames += [block_start(2, {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {}})]
    frames += [block_delta(2, {"type": "input_json_delta", "partial_json": '{"query": "opik'}),
               block_delta(2, {"type": "input_json_delta", "partial_json": ' cipx"}'}), block_stop(2)]
    result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": [{"type": "web_search_result", "url": "https://example.com", "title": "x"}]}
    frames += [block_start(3, result), block_stop(3)]
    frames += [block_start(4, {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {}})]
    frames += [block_delta(4, {"type": "input_json_delta", "partial_json": ""})]
    frames += [block_delta(4, {"type": "input_json_delta", "partial_json": TOOL_JSON[i : i + 5]}) for i in range(0, len(TOOL_JSON), 5)]
    frames += [block_stop(4)]
    frames += [message_delta({"output_tokens": 40}, stop_reason=None)]
    frames += [message_delta({
        "input_tokens": 12,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 41000,
        "output_tokens": 87,
        "server_tool_use": {"web_search_requests": 1},
    }, stop_reason="tool_use")]
    frames += [STOP]
    return frames


EXPECTED_CONTENT = [
    {"type": "thinking", "thinking": "Let me look around.", "signature": "EqQBCkYIARgCIkB"},
    {"type": "text", "text": "I'll run ls. ✓"},
    {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "opik cipx"}},
    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": [{"type": "web_search_result", "url": "https://example.com", "title": "x"}]},
    {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": TOOL_INPUT},
]


def read_chunks(chunks: list[bytes], start: float = 100.0) -> ResponseSummary:
    reader = StreamReader()
    for i, chunk in enumerate(chunks):
        reader.feed(chunk, start + i)
    return reader.finish()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# --- streams ------------------------------------------------------------------------


def test_complete_stream_reconstructs_message() -> None:
    frames = full_stream()
    summary = read_chunks([b"".join(frames)])
    assert summary.outcome is Outcome.COMPLETE
    assert summary.error is None
    assert summary.model == "claude-opus-4-5-20251101"
    assert summary.message_id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert summary.stop_reason == "tool_use"
    assert summary.events == len(frames)
    assert summary.content == EXPECTED_CONTENT


def test_cumulative_message_delta_usage_takes_the_last_value_not_the_sum() -> None:
    usage = read_chunks([b"".join(full_stream())]).usage
    assert usage is not None
    assert usage.output_tokens == 87  # 1 (start) + 40 + 87 would be 128
    assert usage.input_tokens == 12
    assert usage.cache_creation_input_tokens == 3000
    assert usage.cache_read_input_tokens == 41000
    assert (usage.cache_creation_5m, usage.cache_creation_1h) == (1000, 2000)
    assert usage.web_search_requests == 1
    assert (usage.service_tier, usage.inference_geo) == ("standard", "us")
    assert usage.raw["server_tool_use"] == {"web_search_requests": 1}


def test_later_nested_usage_objects_replace_earlier_ones_whole() -> None:
    body = b"".join([
        message_start({"input_tokens": 5, "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 0}, "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 2}, "output_tokens": 1}),
        message_delta({"output_tokens": 3, "cache_creation": {"ephemeral_1h_input_tokens": 9}, "server_tool_use": {"web_search_requests": 4}}),
        STOP,
    ])
    usage = read_chunks([body]).usage
    assert usage is not None
    assert usage.raw["cache_creation"] == {"ephemeral_1h_input_tokens": 9}
    assert (usage.cache_creation_5m, usage.cache_creation_1h) == (None, 9)
    assert (usage.web_search_requests, usage.web_fetch_requests) == (4, 0)
    assert usage.output_tokens == 3


def test_null_usage_values_in_a_delta_keep_the_start_value() -> None:
    body = b"".join([
        message_start({"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1, "speed": "fast"}),
        message_delta({"output_tokens": 9, "input_tokens": None, "cache_read_input_tokens": None, "server_tool_use": None}),
        STOP,
    ])
    usage = read_chunks([body]).usage
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (5, 100, 9)
    assert usage.speed == "fast"
    assert "server_tool_use" not in usage.raw


def test_usage_from_message_delta_alone_is_kept() -> None:
    body = b"".join([message_delta({"output_tokens": 4}), STOP])
    summary = read_chunks([body])
    assert summary.usage is not None and summary.usage.output_tokens == 4
    assert summary.model is None


def test_stream_without_usage_has_no_usage() -> None:
    summary = read_chunks([frame("message_stop", {"type": "message_stop"})])
    assert summary.usage is None
    assert summary.outcome is Outcome.COMPLETE


def test_first_token_time_is_the_chunk_completing_the_first_non_empty_delta() -> None:
    frames = [
        message_start(START_USAGE), PING,
        block_start(0, {"type": "text", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": ""}),  # empty: not a token
        block_delta(0, {"type": "text_delta", "text": "Hi"}),
        STOP,
    ]
    first = frames[4]
    chunks = [*frames[:4], first[:10], first[10:], frames[5]]
    reader = StreamReader()
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    for at, chunk in zip(times, chunks):
        reader.feed(chunk, at)
    assert reader.finish().first_token_at == 6.0


@pytest.mark.parametrize(
    "delta",
    [
        {"type": "thinking_delta", "thinking": "hmm"},
        {"type": "input_json_delta", "partial_json": "{"},
    ],
)
def test_first_token_counts_thinking_and_tool_input(delta: dict[str, Any]) -> None:
    chunks = [message_start(START_USAGE), block_delta(0, {"type": "signature_delta", "signature": "s"}), block_delta(0, delta)]
    assert read_chunks(chunks, start=10.0).first_token_at == 12.0


def test_stream_with_no_content_has_no_first_token_time() -> None:
    assert read_chunks([message_start(START_USAGE), PING, STOP]).first_token_at is None


def test_byte_by_byte_feeding_equals_one_shot() -> None:
    body = b"".join(full_stream())
    whole = read_chunks([body])
    whole.first_token_at = None
    piecemeal = read_chunks([bytes([b]) for b in body])
    piecemeal.first_token_at = None
    assert piecemeal == whole


def test_crlf_line_endings_read_the_same() -> None:
    body = b"".join(full_stream())
    crlf = body.replace(b"\n", b"\r\n")
    a, b = read_chunks([body]), read_chunks([crlf[i : i + 3] for i in range(0, len(crlf), 3)])
    a.first_token_at = b.first_token_at = None
    assert a == b


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=60), crlf=st.booleans())
def test_any_chunking_reads_the_same(cuts: list[int], crlf: bool) -> None:
    body = b"".join(full_stream())
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    summary = read_chunks(split_at(body, cuts))
    assert summary.content == EXPECTED_CONTENT
    assert summary.usage is not None and summary.usage.output_tokens == 87
    assert summary.outcome is Outcome.COMPLETE
    assert summary.events == len(full_stream())


def test_stream_cut_before_message_stop_is_truncated_and_keeps_what_was_seen() -> None:
    frames = full_stream()
    cut = len(frames) - 2  # after the first message_delta, before the last
    summary = read_chunks([b"".join(frames[:cut])])
    assert summary.outcome is Outcome.TRUNCATED
    assert summary.error == f"stream ended after {cut} events without message_stop"
    assert summary.usage is not None
    assert summary.usage.output_tokens == 40
    assert summary.usage.cache_read_input_tokens == 41000
    assert summary.content == EXPECTED_CONTENT


def test_stream_cut_mid_tool_input_keeps_the_raw_json() -> None:
    frames = full_stream()
    tool_deltas = [i for i, f in enumerate(frames) if b'"index": 4' in f and b"input_json_delta" in f]
    summary = read_chunks([b"".join(frames[: tool_deltas[4]])])
    assert summary.outcome is Outcome.TRUNCATED
    tool = summary.content[-1]
    assert "input" not in tool
    assert tool["input_raw"] == TOOL_JSON[:15]
    assert (tool["id"], tool["name"]) == ("toolu_01A", "Bash")


def test_stream_cut_mid_frame_is_truncated() -> None:
    body = b"".join(full_stream())
    summary = read_chunks([body[: len(body) // 2]])
    assert summary.outcome is Outcome.TRUNCATED
    assert summary.model == "claude-opus-4-5-20251101"


def test_empty_stream_is_truncated() -> None:
    summary = read_chunks([])
    assert summary.outcome is Outcome.TRUNCATED
    assert summary.error == "stream ended after 0 events without message_stop"


def test_final_message_stop_without_blank_line_still_completes() -> None:
    body = b"".join(full_stream()).rstrip(b"\n")
    assert read_chunks([body]).outcome is Outcome.COMPLETE


def test_error_event_mid_stream_is_a_stream_error_that_keeps_usage() -> None:
    frames = [message_start(START_USAGE), block_start(0, {"type": "text", "text": ""}),
              block_delta(0, {"type": "text_delta", "text": "par"}), OVERLOADED]
    summary = read_chunks([b"".join(frames)])
    assert summary.outcome is Outcome.STREAM_ERROR
    assert summary.error == "overloaded_error: Overloaded"
    assert summary.usage is not None and summary.usage.cache_read_input_tokens == 41000
    assert summary.content == [{"type": "text", "text": "par"}]


def test_first_error_event_wins() -> None:
    other = frame("error", {"type": "error", "error": {"type": "api_error", "message": "Internal"}})
    summary = read_chunks([OVERLOADED + other])
    assert summary.error == "overloaded_error: Overloaded"


def test_error_event_without_details_still_reads_as_an_error() -> None:
    summary = read_chunks([frame("error", {"type": "error"})])
    assert summary.outcome is Outcome.STREAM_ERROR
    assert summary.error == "error event without details"


def test_unknown_events_and_non_json_data_are_counted_but_ignored() -> None:
    frames = full_stream()
    noise = [
        frame("future_event", {"type": "future_event", "index": 0}),
        frame("content_block_delta", "not json at all"),
        frame("content_block_delta", "[1, 2, 3]"),
        frame("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "hologram_delta", "x": 1}}),
        frame("content_block_delta", {"type": "content_block_delta", "index": "one", "delta": {"type": ["text_delta"]}}),
        frame("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": ["unhashable"]}}),
        frame("message_start", {"type": "message_start", "message": "nope"}),
        b": comment lines are not events\n\n",
    ]
    body = b"".join(frames[:3] + noise + frames[3:])
    summary = read_chunks([body])
    assert summary.events == len(frames) + len(noise) - 1
    assert summary.content == EXPECTED_CONTENT
    assert summary.outcome is Outcome.COMPLETE


def test_data_only_frames_are_dispatched_by_their_type_field() -> None:
    frames = [frame(name, data, name=False) for name, data in [
        ("message_start", {"type": "message_start", "message": {"model": "claude-haiku-4-5", "usage": {"input_tokens": 3}}}),
        ("message_stop", {"type": "message_stop"}),
    ]]
    summary = read_chunks(frames)
    assert summary.model == "claude-haiku-4-5"
    assert summary.outcome is Outcome.COMPLETE


def test_invalid_utf8_in_a_delta_becomes_replacement_characters() -> None:
    bad = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\xff\xc3b"}}\n\n'
    summary = read_chunks([message_start(START_USAGE), block_start(0, {"type": "text", "text": ""}), bad, STOP])
    assert summary.content == [{"type": "text", "text": "a\ufffd\ufffdb"}]
    assert summary.outcome is Outcome.COMPLETE


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300))
def test_garbage_never_raises(body: bytes) -> None:
    summary = read_chunks([body, b"".join(full_stream()[:3]), body])
    assert summary.outcome in (Outcome.TRUNCATED, Outcome.COMPLETE, Outcome.STREAM_ERROR)


def test_delta_for_an_unstarted_block_still_collects_its_text() -> None:
    summary = read_chunks([block_delta(3, {"type": "text_delta", "text": "orphan"}), STOP])
    assert summary.content == [{"type": "text", "text": "orphan"}]


def test_unparseable_tool_input_is_kept_raw() -> None:
    frames = [block_start(0, {"type": "tool_use", "id": "t", "name": "Read", "input": {}}),
              block_delta(0, {"type": "input_json_delta", "partial_json": '{"path": '}),
              block_delta(0, {"type": "input_json_delta", "partial_json": "oops}"}), STOP]
    assert read_chunks(frames).content == [{"type": "tool_use", "id": "t", "name": "Read", "input_raw": '{"path": oops}'}]


def test_tool_without_input_deltas_keeps_its_started_input() -> None:
    frames = [block_start(0, {"type": "tool_use", "id": "t", "name": "Noop", "input": {}}),
              block_delta(0, {"type": "input_json_delta", "partial_json": ""}), STOP]
    assert read_chunks(frames).content == [{"type": "tool_use", "id": "t", "name": "Noop", "input": {}}]


def test_citations_deltas_are_collected_on_their_block() -> None:
    cite = {"type": "web_search_result_location", "url": "https://example.com", "cited_text": "x"}
    frames = [block_start(0, {"type": "text", "text": ""}), block_delta(0, {"type": "citations_delta", "citation": cite}),
              block_delta(0, {"type": "text_delta", "text": "cited"}), STOP]
    assert read_chunks(frames).content == [{"type": "text", "text": "cited", "citations": [cite]}]


def test_redacted_thinking_is_kept_as_started() -> None:
    block = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"}
    assert read_chunks([block_start(0, block), block_stop(0), STOP]).content == [block]


def test_finish_is_idempotent_and_later_feeds_are_ignored() -> None:
    reader = StreamReader()
    reader.feed(b"".join(full_stream()), 1.0)
    first = reader.finish()
    reader.feed(OVERLOADED, 2.0)
    assert reader.finish() is first
    assert first.outcome is Outcome.COMPLETE


def test_five_megabyte_stream_reads_in_linear_time() -> None:
    piece = "x" * 1000
    deltas = b"".join(block_delta(0, {"type": "text_delta", "text": piece}) for _ in range(1))
    count = 5_000_000 // len(deltas)
    body = b"".join([message_start(START_USAGE), block_start(0, {"type": "text", "text": ""}), deltas * count,
                     message_delta({"output_tokens": 1234}), STOP])
    assert len(body) >= 5_000_000
    chunks = [body[i : i + 1500] for i in range(0, len(body), 1500)]
    started = time.perf_counter()
    summary = read_response(200, "text/event-stream", ((float(i), c) for i, c in enumerate(chunks)))
    elapsed = time.perf_counter() - started
    assert summary.outcome is Outcome.COMPLETE
    assert summary.content[0]["text"] == piece * count
    assert summary.usage is not None and summary.usage.output_tokens == 1234
    assert elapsed < 15, elapsed


# --- JSON bodies and dispatch -------------------------------------------------------

JSON_MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi!"}, {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/x"}}],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 512,
              "server_tool_use": {"web_fetch_requests": 2}, "service_tier": "priority"},
}


def test_json_message_is_read_whole() -> None:
    summary = read_json_response(json.dumps(JSON_MESSAGE).encode(), 200)
    assert summary.outcome is Outcome.COMPLETE
    assert summary.error is None
    assert (summary.model, summary.message_id, summary.stop_reason) == ("claude-sonnet-4-5-20250929", "msg_013Zva2CMHLNnXjNJJKqJ2EF", "tool_use")
    assert summary.content == JSON_MESSAGE["content"]
    assert summary.usage is not None
    assert (summary.usage.output_tokens, summary.usage.cache_read_input_tokens, summary.usage.web_fetch_requests) == (25, 512, 2)
    assert summary.usage.service_tier == "priority"
    assert summary.events == 0


def test_overloaded_529_body_is_an_http_error_with_its_message() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011"}'
    summary = read_response(529, "application/json", [(1.0, body[:20]), (1.1, body[20:])])
    assert summary.outcome is Outcome.HTTP_ERROR
    assert summary.error == "overloaded_error: Overloaded"
    assert summary.usage is None


def test_invalid_request_400_keeps_the_api_message() -> None:
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: must be ≤ 64000"}}).encode()
    summary = read_json_response(body, 400)
    assert (summary.outcome, summary.error) == (Outcome.HTTP_ERROR, "invalid_request_error: max_tokens: must be ≤ 64000")


def test_non_json_error_body_is_summarised() -> None:
    body = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>" + b"x" * 1000 + b"</body></html>"
    summary = read_json_response(body, 502)
    assert summary.outcome is Outcome.HTTP_ERROR
    assert summary.error is not None
    assert summary.error.startswith("HTTP 502: <html> <head><title>502 Bad Gateway</title>")
    assert len(summary.error) < 220


def test_json_error_body_without_an_error_envelope_is_quoted() -> None:
    summary = read_json_response(b'{"type": "message", "detail": "upstream hiccup"}', 500)
    assert summary.error == 'HTTP 500: {"type": "message", "detail": "upstream hiccup"}'


def test_empty_error_body_names_the_status() -> None:
    assert read_json_response(b"", 503).error == "HTTP 503"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe garbage", "body is not JSON"),
        (b"[1, 2]", "JSON body is not a message"),
        (b'{"input_tokens": 12}', "JSON body is not a message"),
        (b'{"type": "completion"}', "JSON body is not a message (type='completion')"),
    ],
)
def test_2xx_body_that_is_not_a_message_is_unparseable(body: bytes, reason: str) -> None:
    summary = read_json_response(body, 200)
    assert summary.outcome is Outcome.UNPARSEABLE
    assert summary.error is not None and summary.error.startswith(reason)


def test_deeply_nested_json_does_not_raise() -> None:
    summary = read_json_response(b"[" * 100_000 + b"]" * 100_000, 200)
    assert summary.outcome is Outcome.UNPARSEABLE


def test_event_stream_content_type_with_parameters_is_read_as_a_stream() -> None:
    chunks = [(float(i), f) for i, f in enumerate(full_stream())]
    summary = read_response(200, "Text/Event-Stream; charset=utf-8", chunks)
    assert summary.content == EXPECTED_CONTENT
    assert summary.first_token_at == 3.0


def test_error_status_with_an_sse_error_event_reports_it() -> None:
    summary = read_response(529, "text/event-stream", [(0.0, OVERLOADED)])
    assert (summary.outcome, summary.error) == (Outcome.HTTP_ERROR, "overloaded_error: Overloaded")


def test_error_status_labelled_as_a_stream_but_holding_json_reports_it() -> None:
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}'
    summary = read_response(429, "text/event-stream", [(0.0, body)])
    assert (summary.outcome, summary.error) == (Outcome.HTTP_ERROR, "rate_limit_error: Slow down")


def test_error_status_with_an_empty_stream_names_the_status() -> None:
    summary = read_response(500, "text/event-stream", [])
    assert (summary.outcome, summary.error) == (Outcome.HTTP_ERROR, "HTTP 500")


@pytest.mark.parametrize("content_type", [None, ""])
def test_missing_content_type_is_sniffed(content_type: str | None) -> None:
    stream = read_response(200, content_type, [(0.0, b"".join(full_stream()))])
    assert stream.outcome is Outcome.COMPLETE and stream.content == EXPECTED_CONTENT
    message = read_response(200, content_type, [(0.0, json.dumps(JSON_MESSAGE).encode())])
    assert message.outcome is Outcome.COMPLETE and message.model == "claude-sonnet-4-5-20250929"


def test_sse_body_with_json_content_type_is_unparseable() -> None:
    summary = read_response(200, "application/json", [(0.0, b"".join(full_stream()))])
    assert summary.outcome is Outcome.UNPARSEABLE


# --- content encodings --------------------------------------------------------------


def odd_chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        size = sizes[k % len(sizes)]
        out.append(data[i : i + size])
        i += size
        k += 1
    return out


PLAIN = b"".join(full_stream()) * 20


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP"])
@pytest.mark.parametrize("sizes", [[1], [3, 1, 7], [4096]])
def test_gzip_decodes_in_odd_chunk_sizes(encoding: str, sizes: list[int]) -> None:
    compressed = gzip.compress(PLAIN)
    chunks = odd_chunks(compressed, sizes)
    decoded, error = decode_content(encoding, chunks)
    assert error is None
    assert len(decoded) == len(chunks)
    assert b"".join(decoded) == PLAIN


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib-wrapped", "raw"])
@pytest.mark.parametrize("sizes", [[1], [2, 5], [1000]])
def test_deflate_decodes_wrapped_and_raw(wbits: int, sizes: list[int]) -> None:
    obj = zlib.compressobj(wbits=wbits)
    compressed = obj.compress(PLAIN) + obj.flush()
    chunks = odd_chunks(compressed, sizes)
    decoded, error = decode_content("deflate", chunks)
    assert error is None
    assert b"".join(decoded) == PLAIN
    assert len(decoded) == len(chunks)


def test_raw_deflate_that_looks_like_a_zlib_header_still_decodes() -> None:
    # A stored, non-final raw block whose first two bytes (0x08, 0x1d) pass the zlib header check.
    first, second = b"a" * 29, b"the rest"
    assert (0x08 << 8 | 0x1D) % 31 == 0
    raw = bytes([0x08, 29, 0, 0xFF - 29, 0xFF]) + first
    raw += bytes([0x01, len(second), 0, 0xFF - len(second), 0xFF]) + second
    decoded, error = decode_content("deflate", odd_chunks(raw, [1]))
    assert error is None
    assert b"".join(decoded) == first + second


def test_streamed_gzip_output_follows_the_input_chunks() -> None:
    # A streaming compressor flushing per event, as a real server does: each chunk decodes on arrival.
    obj = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    frames = full_stream()
    chunks = [obj.compress(f) + obj.flush(zlib.Z_SYNC_FLUSH) for f in frames]
    chunks[-1] += obj.flush()
    decoded, error = decode_content("gzip", chunks)
    assert error is None
    assert decoded == frames


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=30))
def test_gzip_any_chunking(cuts: list[int]) -> None:
    compressed = gzip.compress(PLAIN[:5000])
    decoded, error = decode_content("gzip", split_at(compressed, cuts))
    assert error is None
    assert b"".join(decoded) == PLAIN[:5000]


def test_concatenated_gzip_members_decode_fully() -> None:
    body = gzip.compress(b"first ") + gzip.compress(b"second")
    decoded, error = decode_content("gzip", odd_chunks(body, [5]))
    assert error is None
    assert b"".join(decoded) == b"first second"


def test_chained_encodings_are_undone_in_reverse_order() -> None:
    obj = zlib.compressobj()
    body = gzip.compress(obj.compress(PLAIN) + obj.flush())
    decoded, error = decode_content("deflate, gzip", odd_chunks(body, [333]))
    assert error is None
    assert b"".join(decoded) == PLAIN


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
def test_identity_passes_chunks_through(encoding: str | None) -> None:
    chunks = [b"a", b"", b"bc"]
    assert decode_content(encoding, chunks) == (chunks, None)


def test_unsupported_encoding_returns_the_original_with_an_error() -> None:
    chunks = [b"\x00\x01", b"\x02"]
    decoded, error = decode_content("compress", chunks)
    assert decoded == chunks
    assert error == "unsupported content-encoding: compress"


def test_corrupt_gzip_returns_the_original_with_an_error() -> None:
    compressed = bytearray(gzip.compress(PLAIN))
    compressed[200:260] = b"\xff" * 60
    chunks = odd_chunks(bytes(compressed), [17])
    decoded, error = decode_content("gzip", chunks)
    assert decoded == chunks
    assert error is not None and error.startswith("gzip decode failed")


def test_not_gzip_at_all_returns_the_original_with_an_error() -> None:
    chunks = [b"plain text, mislabelled"]
    decoded, error = decode_content("gzip", chunks)
    assert decoded == chunks
    assert error is not None


def test_truncated_gzip_keeps_the_decoded_prefix_and_says_so() -> None:
    compressed = gzip.compress(PLAIN)
    cut = compressed[: len(compressed) * 2 // 3]
    decoded, error = decode_content("gzip", odd_chunks(cut, [100]))
    body = b"".join(decoded)
    assert error == "gzip: compressed body ended early"
    assert 0 < len(body) < len(PLAIN)
    assert PLAIN.startswith(body)


def test_deflate_shorter_than_its_header_is_reported() -> None:
    decoded, error = decode_content("deflate", [b"x"])
    assert error == "deflate: body shorter than its header"
    assert decoded == [b""]


def test_no_chunks_decode_to_none() -> None:
    assert decode_content("gzip", []) == ([], None)


def test_brotli_decodes() -> None:
    import brotli  # a dependency: never skipped
    compressed = brotli.compress(PLAIN)
    decoded, error = decode_content("br", odd_chunks(compressed, [7, 1]))
    assert error is None
    assert b"".join(decoded) == PLAIN


def test_zstd_decodes() -> None:
    import zstandard  # a dependency: never skipped
    compressed = zstandard.ZstdCompressor().compress(PLAIN)
    decoded, error = decode_content("zstd", odd_chunks(compressed, [7, 1]))
    assert error is None
    assert b"".join(decoded) == PLAIN


def test_decoded_gzip_stream_reads_like_the_plain_one() -> None:
    frames = full_stream()
    compressed = gzip.compress(b"".join(frames))
    rng = random.Random(7)
    chunks, i = [], 0
    while i < len(compressed):
        n = rng.randint(1, 40)
        chunks.append(compressed[i : i + n])
        i += n
    decoded, error = decode_content("gzip", chunks)
    assert error is None
    summary = read_response(200, "text/event-stream", list(enumerate(decoded)))
    assert summary.content == EXPECTED_CONTENT
    assert summary.outcome is Outcome.COMPLETE

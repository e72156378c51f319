"""OpenAI Responses answers read into usage and outcome (wire/responses.py)."""

from __future__ import annotations

import json

from opik_cipx.model import Outcome
from opik_cipx.wire.responses import read_responses, usage_from_openai
from tests.support.fake_responses import Answer, answer_events

ANSWER = Answer(text="hello", input_tokens=1200, cached_tokens=1000, output_tokens=40, reasoning_tokens=8)


def sse(events: list[dict[str, object]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_usage_splits_cached_input_and_keeps_reasoning() -> None:
    u = usage_from_openai(ANSWER.usage())
    assert (u.input_tokens, u.cache_read_input_tokens, u.output_tokens, u.reasoning_tokens) == (200, 1000, 40, 8)
    assert u.prompt_tokens == 1200 and u.raw == ANSWER.usage()


def test_sse_and_websocket_read_alike() -> None:
    events = answer_events(ANSWER, {}, "resp_1", "gpt-5.1-codex")
    body = sse(events)
    by_sse = read_responses(200, "text/event-stream", [(1.0, body[:50]), (2.0, body[50:])], websocket=False)
    by_ws = read_responses(101, "", [(float(n), json.dumps(e).encode()) for n, e in enumerate(events)],
                           websocket=True)
    for s in (by_sse, by_ws):
        assert s.outcome is Outcome.COMPLETE and s.model == "gpt-5.1-codex" and s.message_id == "resp_1"
        assert s.usage is not None and s.usage.cache_read_input_tokens == 1000
        assert s.stop_reason == "completed"
        assert s.content[0]["content"][0]["text"] == "hello"
    assert by_ws.first_token_at == 3.0  # the first output_text.delta


def test_a_stream_without_its_terminal_event_is_truncated() -> None:
    events = answer_events(ANSWER, {}, "resp_1", "m")[:-1]
    s = read_responses(200, "text/event-stream", [(1.0, sse(events))], websocket=False)
    assert s.outcome is Outcome.TRUNCATED and s.usage is None


def test_failed_and_error_events_are_stream_errors() -> None:
    failed = {"type": "response.failed", "response": {"id": "r", "status": "failed",
                                                      "error": {"code": "server_error", "message": "boom"}}}
    s = read_responses(101, "", [(1.0, json.dumps(failed).encode())], websocket=True)
    assert (s.outcome, s.error) == (Outcome.STREAM_ERROR, "server_error: boom")
    err = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    s = read_responses(101, "", [(1.0, json.dumps(err).encode()), (2.0, b"not json")], websocket=True)
    assert s.outcome is Outcome.STREAM_ERROR and s.error == "invalid_request_error: bad"


def test_http_error_and_plain_json_answers() -> None:
    err = json.dumps({"error": {"type": "invalid_request_error", "message": "no"}}).encode()
    s = read_responses(400, "application/json", [(1.0, err)], websocket=False)
    assert (s.outcome, s.error) == (Outcome.HTTP_ERROR, "invalid_request_error: no")
    done = answer_events(ANSWER, {}, "resp_2", "gpt-5")[-1]["response"]
    s = read_responses(200, "application/json", [(1.0, json.dumps(done).encode())], websocket=False)
    assert s.outcome is Outcome.COMPLETE and s.usage is not None and s.usage.output_tokens == 40
    s = read_responses(200, "application/json", [(1.0, b"[1]")], websocket=False)
    assert s.outcome is Outcome.UNPARSEABLE

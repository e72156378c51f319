"""Facts read off request bytes (wire/request.py): the session id, model and speed."""

from __future__ import annotations

import json

from opik_cipx.wire.request import model_from_body, session_from_body, speed_from_body

SID = "a0a7a7c3-a4dd-4145-a443-e9786d95821f"


def claude_body(user_id: str, messages: list[object] | None = None) -> bytes:
    return json.dumps({
        "model": "claude-opus-4-8",
        "messages": messages or [{"role": "user", "content": "hi"}],
        "metadata": {"user_id": user_id},
        "max_tokens": 100,
        "stream": True,
    }).encode()


def test_session_from_the_json_user_id_at_the_end() -> None:
    body = claude_body(json.dumps({"device_id": "d", "account_uuid": "", "session_id": SID}))
    assert session_from_body(body) == SID


def test_session_from_the_older_user_id_format() -> None:
    assert session_from_body(claude_body(f"user_abc_account__session_{SID}")) == SID


def test_the_top_level_metadata_wins_over_a_user_id_key_in_a_tool_input() -> None:
    # A tool input is structural JSON, so its "user_id" key is unescaped; metadata comes after it.
    messages = [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "Lookup", "input": {"user_id": "someone else"}}]}]
    body = claude_body(json.dumps({"session_id": SID}), messages)
    assert session_from_body(body) == SID


def test_a_last_user_id_that_is_not_a_string_falls_back_to_the_first() -> None:
    body = json.dumps({"metadata": {"user_id": f"user_x_session_{SID}"}, "extra": {"user_id": 7}}).encode()
    assert session_from_body(body) == SID


def test_no_session_when_there_is_none() -> None:
    assert session_from_body(b'{"model": "m", "messages": []}') is None
    assert session_from_body(claude_body("not json, no session")) is None
    assert session_from_body(b"garbage \xff\xfe") is None


def test_model_and_speed() -> None:
    body = b'{"model": "claude-opus-4-8", "messages": [], "speed": "fast"}'
    assert model_from_body(body) == "claude-opus-4-8"
    assert speed_from_body(body) == "fast"
    assert speed_from_body(claude_body("x")) is None

"""The fake upstream must look like api.anthropic.com to the official SDK and to raw HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from tests.support.fake_anthropic import (
    FakeAnthropic,
    RecordedRequest,
    Rule,
    Rules,
    Turn,
    count_tokens_for,
    load_records,
    usage_for,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "hello"}]


def parse_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Strict parse: every event must be exactly ``event: X\\ndata: {json}\\n\\n``."""
    assert data.endswith(b"\n\n")
    events = []
    for chunk in data.decode().split("\n\n")[:-1]:
        event_line, data_line = chunk.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line[len("data: ") :])
        assert payload["type"] == event_line[len("event: ") :]
        events.append((payload["type"], payload))
    return events


def client(fake: FakeAnthropic, **kwargs: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test", **kwargs)


async def post_raw(fake: FakeAnthropic, body: bytes, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=kwargs.pop("auto_decompress", True)) as session:
        async with session.post(fake.url + "/v1/messages?beta=true", data=body, headers={"content-type": "application/json"}) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def stream_body(**extra: Any) -> bytes:
    return json.dumps({"model": "claude-opus-4-6", "max_tokens": 64, "stream": True, "messages": PROMPT, **extra}).encode()


async def test_sdk_streaming_gets_text_thinking_and_usage_derived_from_request_size() -> None:
    async with FakeAnthropic([Turn(text="a fairly long answer that spans several deltas", thinking="let me think")]) as fake:
        async with client(fake) as api, api.messages.stream(model="claude-opus-4-6", max_tokens=64, messages=PROMPT) as stream:
            message = await stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "a fairly long answer that spans several deltas"
    assert message.content[0].thinking == "let me think"
    expected = usage_for(fake.requests[0].body)
    assert message.usage.input_tokens == expected["input_tokens"]
    assert message.usage.cache_read_input_tokens == expected["cache_read_input_tokens"]
    assert message.usage.cache_creation_input_tokens == expected["cache_creation_input_tokens"]
    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == expected["cache_creation"]["ephemeral_1h_input_tokens"]
    assert message.usage.output_tokens > 1
    assert message.model == "claude-opus-4-6"
    assert fake.requests[0].json()["stream"] is True


async def test_sdk_non_streaming_tool_use_round_trips_input_and_stop_reason() -> None:
    turn = Turn(text="", tool_uses=[("Bash", {"command": "echo hi", "description": "say hi"}), ("Read", {"file_path": "/x"})])
    async with FakeAnthropic([turn]) as fake:
        async with client(fake) as api:
            message = await api.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=PROMPT)
    assert message.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in message.content if b.type == "tool_use"] == list(turn.tool_uses)
    assert len({b.id for b in message.content if b.type == "tool_use"}) == 2
    assert fake.sent[0] == json.dumps(json.loads(fake.sent[0]), separators=(",", ":")).encode()
    assert "stream" not in fake.requests[0].json()


async def test_stream_events_are_framed_and_ordered_like_the_api() -> None:
    async with FakeAnthropic([Turn(text="x" * 60, tool_uses=[("Grep", {"pattern": "a"})])]) as fake:
        status, headers, data = await post_raw(fake, stream_body())
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    names = [name for name, _ in parse_sse(data)]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    assert data == fake.sent[0]
    events = parse_sse(data)
    delta = next(p for n, p in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    # message_delta carries cumulative usage: the input fields repeat message_start's.
    start_usage = events[0][1]["message"]["usage"]
    for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert delta["usage"][key] == start_usage[key] == usage_for(fake.requests[0].body)[key]
    tool_json = "".join(p["delta"]["partial_json"] for n, p in events if n == "content_block_delta" and p["index"] == 1)
    assert json.loads(tool_json) == {"pattern": "a"}


async def test_request_body_is_recorded_byte_for_byte() -> None:
    body = b'{ "model" : "m",\n "max_tokens": 5, "messages": [{"role":"user","content":"caf\\u00e9 \xc3\xa9"}], "stream": true }'
    async with FakeAnthropic() as fake:
        await post_raw(fake, body)
    assert fake.requests[0].body == body
    assert fake.requests[0].path == "/v1/messages?beta=true"
    assert fake.requests[0].headers["content-type"] == "application/json"


async def test_every_response_has_request_id_and_ratelimit_headers() -> None:
    async with FakeAnthropic([Turn(status=500)]) as fake, aiohttp.ClientSession() as session:
        responses = []
        for method, path, body in (
            ("HEAD", "/", None),
            ("GET", "/", None),
            ("POST", "/v1/messages", stream_body()),
            ("POST", "/v1/messages/count_tokens?beta=true", stream_body()),
            ("GET", "/v1/nowhere", None),
        ):
            async with session.request(method, fake.url + path, data=body) as resp:
                responses.append((resp.status, resp.headers.copy()))
    assert [status for status, _ in responses] == [200, 200, 500, 200, 404]
    ids = [headers["request-id"] for _, headers in responses]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)
    assert all("anthropic-ratelimit-requests-remaining" in headers for _, headers in responses)
    assert all("anthropic-ratelimit-output-tokens-limit" in headers for _, headers in responses)


async def test_count_tokens_depends_on_request_size_and_consumes_no_turn() -> None:
    async with FakeAnthropic([Turn(text="first")]) as fake:
        async with client(fake) as api:
            count = await api.messages.count_tokens(model="claude-opus-4-6", messages=PROMPT)
            message = await api.messages.create(model="claude-opus-4-6", max_tokens=5, messages=PROMPT)
    assert count.input_tokens == count_tokens_for(fake.requests[0].body) == len(fake.requests[0].body) // 4
    assert message.content[0].text == "first"


async def test_rate_limit_error_has_anthropic_body_and_retry_after() -> None:
    async with FakeAnthropic([Turn(status=429)]) as fake:
        async with client(fake, max_retries=0) as api:
            with pytest.raises(anthropic.RateLimitError) as caught:
                await api.messages.create(model="m", max_tokens=5, messages=PROMPT)
    assert caught.value.response.headers["retry-after"] == "1"
    body = json.loads(fake.sent[0])
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["request_id"] == caught.value.response.headers["request-id"]


async def test_sdk_retries_overloaded_with_identical_bytes_then_succeeds() -> None:
    async with FakeAnthropic([Turn(status=529, retry_after=0.01), Turn(text="recovered")]) as fake:
        async with client(fake, max_retries=2) as api:
            message = await api.messages.create(model="m", max_tokens=5, messages=PROMPT)
    assert message.content[0].text == "recovered"
    assert json.loads(fake.sent[0])["error"]["type"] == "overloaded_error"
    first, second = fake.messages_requests()
    assert first.body == second.body


async def test_error_event_mid_stream_ends_the_stream_with_an_error_event() -> None:
    async with FakeAnthropic([Turn(text="y" * 100, error_event_after=4)] * 2) as fake:
        _, _, data = await post_raw(fake, stream_body())
        async with client(fake, max_retries=0) as api:
            with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
                async with api.messages.stream(model="m", max_tokens=5, messages=PROMPT) as stream:
                    await stream.get_final_message()
    events = parse_sse(data)
    assert len(events) == 5
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "overloaded_error"


async def test_reset_after_events_aborts_the_connection_after_exactly_n_events() -> None:
    async with FakeAnthropic([Turn(text="z" * 100, reset_after_events=3)]) as fake:
        with pytest.raises(aiohttp.ClientError):
            await post_raw(fake, stream_body())
    assert [name for name, _ in parse_sse(fake.sent[0])] == ["message_start", "content_block_start", "ping"]


async def test_gzip_stream_decodes_to_the_same_events_and_sent_holds_wire_bytes() -> None:
    async with FakeAnthropic([Turn(text="same"), Turn(text="same", gzip=True), Turn(text="same", gzip=True)]) as fake:
        body = stream_body()
        _, _, plain = await post_raw(fake, body)
        _, headers, decoded = await post_raw(fake, body)
        _, _, raw = await post_raw(fake, body, auto_decompress=False)
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(fake.sent[1]) == decoded
    assert raw[:2] == b"\x1f\x8b"
    def strip_ids(data: bytes) -> list[tuple[str, dict[str, Any]]]:
        return [(n, {k: v for k, v in p.items() if k != "message"}) for n, p in parse_sse(data)]

    assert strip_ids(decoded) == strip_ids(plain)


async def test_delays_hold_back_first_byte_and_space_out_events() -> None:
    async with FakeAnthropic([Turn(first_byte_delay=0.3), Turn(event_delay=0.05)]) as fake:
        started = time.monotonic()
        await post_raw(fake, stream_body())
        first = time.monotonic() - started
        started = time.monotonic()
        _, _, data = await post_raw(fake, stream_body())
        second = time.monotonic() - started
    assert first >= 0.3
    assert second >= 0.05 * (len(parse_sse(data)) - 1)


async def test_exhausted_script_answers_ok_and_callable_script_sees_each_request() -> None:
    seen: list[RecordedRequest] = []

    def script(request: RecordedRequest) -> Turn:
        seen.append(request)
        return Turn(text=f"turn {len(seen)} for {request.json()['model']}")

    async with FakeAnthropic([Turn(text="one")]) as fake:
        async with client(fake) as api:
            texts = [(await api.messages.create(model="m", max_tokens=5, messages=PROMPT)).content[0].text for _ in range(2)]
    async with FakeAnthropic(script) as fake, client(fake) as api:
        message = await api.messages.create(model="claude-x", max_tokens=5, messages=PROMPT)
    assert texts == ["one", "ok"]
    assert message.content[0].text == "turn 1 for claude-x"
    assert seen[0].path == "/v1/messages"


def test_rules_pick_the_first_matching_turn_and_respect_times() -> None:
    rules = Rules.from_json(
        {
            "rules": [
                {"when": {"has_header": "x-claude-code-agent-id"}, "turn": {"text": "sub"}},
                {"when": {"tool_results": 0, "has_tools": True}, "turn": {"tool_uses": [["Bash", {"command": "ls"}]]}, "times": 1},
                {"when": {"last_user_contains": "MARK"}, "turn": {"text": "saw mark"}},
            ],
            "default": {"text": "fallback"},
        }
    )

    def request(body: dict[str, Any], headers: dict[str, str] | None = None) -> RecordedRequest:
        from multidict import CIMultiDict

        return RecordedRequest("POST", "/v1/messages", CIMultiDict(headers or {}), json.dumps(body).encode())

    first = {"messages": [{"role": "user", "content": "go"}], "tools": [{"name": "Bash"}]}
    with_result = {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "MARK"}]}]}
    assert rules(request(first, {"X-Claude-Code-Agent-Id": "ab"})).text == "sub"
    assert rules(request(first)).tool_uses == [("Bash", {"command": "ls"})]
    assert rules(request(first)).text == "fallback"  # the tool rule fired its one time
    assert rules(request(with_result)).text == "saw mark"
    assert Rules.from_json(rules.to_json()).rules[1].when == {"tool_results": 0, "has_tools": True}
    with pytest.raises(ValueError):
        Rules.from_json({"rules": [{"when": {"no_such_condition": 1}, "turn": {}}]})
    assert isinstance(rules.rules[0], Rule)


async def test_invalid_json_body_gets_invalid_request_error() -> None:
    async with FakeAnthropic() as fake:
        status, _, data = await post_raw(fake, b"{not json")
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"


async def test_standalone_cli_writes_port_file_serves_script_and_records(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([Turn(text="from cli").to_dict()]))
    port_file, record_dir = tmp_path / "port", tmp_path / "rec"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.fake_anthropic", "--port-file", str(port_file), "--script", str(script),
        "--record-dir", str(record_dir),
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if port_file.exists():
                break
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test") as api:
            message = await api.messages.create(model="m", max_tokens=5, messages=PROMPT)
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    assert message.content[0].text == "from cli"
    (record,) = load_records(record_dir)
    assert record.json()["messages"] == PROMPT and record.status == 200
    assert json.loads(record.response_body)["content"][0]["text"] == "from cli"
    assert "sk-ant-test" in (record.headers.get("x-api-key", "") + record.headers.get("authorization", ""))

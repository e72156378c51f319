"""The fake Responses upstream answers as Codex expects, and the recorded CLI fixtures hold what we rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.fake_responses import Answer, FakeResponses, answer_events, load_recorded

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "codex"


def sse_events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for block in data.decode().split("\n\n")[:-1]:
        name, payload = block.split("\n")
        event = json.loads(payload.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


async def test_http_answers_the_script_with_exact_usage() -> None:
    async with FakeResponses([Answer(text="hello there, codex", input_tokens=900, cached_tokens=700,
                                     output_tokens=12, reasoning_tokens=3)]) as fake:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{fake.url}/v1/responses", json={"model": "gpt-5.1-codex", "input": []}) as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                events = sse_events(await r.read())
    assert events[0]["type"] == "response.created"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "hello there, codex"
    done = events[-1]
    assert done["type"] == "response.completed"
    assert done["response"]["usage"] == {"input_tokens": 900, "input_tokens_details": {"cached_tokens": 700},
                                         "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 3},
                                         "total_tokens": 912}
    assert [r.transport for r in fake.requests] == ["http"]


async def test_websocket_negotiates_deflate_and_answers_each_frame() -> None:
    script = [Answer(custom=("exec", "text(1)")), Answer(text="second")]
    async with FakeResponses(script) as fake:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{fake.url}/v1/responses", compress=15) as ws:
                assert ws.compress == 15  # permessage-deflate agreed
                turns = []
                for body in ({"type": "response.create", "generate": False, "input": []},
                             {"type": "response.create", "input": [], "previous_response_id": "resp_0001"},
                             {"type": "response.create", "input": []}):
                    await ws.send_str(json.dumps(body))
                    events = []
                    while not events or events[-1]["type"] != "response.completed":
                        events.append(json.loads((await ws.receive()).data))
                    turns.append(events)
    warmup, call, text = turns
    assert "usage" not in warmup[-1]["response"] and warmup[-1]["response"]["output"] == []
    item = call[-1]["response"]["output"][0]
    assert (item["type"], item["name"], item["input"]) == ("custom_tool_call", "exec", "text(1)")
    assert text[-1]["response"]["output"][0]["content"][0]["text"] == "second"
    assert [r.answer is None for r in fake.requests] == [True, False, False]
    assert "permessage-deflate" in fake.requests[0].extensions


async def test_upgrades_refused_with_426_when_websocket_is_off() -> None:
    async with FakeResponses(websocket=False) as fake:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{fake.url}/v1/responses",
                                headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as r:
                assert r.status == 426
    assert len(fake.upgrades) == 1


def test_function_call_events_carry_arguments() -> None:
    events = answer_events(Answer(call=("shell", {"command": ["ls"]})), {}, "resp_9", "gpt-5")
    item = events[-1]["response"]["output"][0]
    assert item["type"] == "function_call" and json.loads(item["arguments"]) == {"command": ["ls"]}
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_recorded_cli_fixtures_have_the_shapes_attribution_relies_on() -> None:
    ws = load_recorded(FIXTURES / "shell_ws")
    assert [r["warmup"] for r in ws] == [True, False, False]
    assert all(r["transport"] == "ws" and "permessage-deflate" in r["extensions"] for r in ws)
    turn, follow = json.loads(ws[1]["body"]), json.loads(ws[2]["body"])
    assert turn["previous_response_id"] == "resp_0001" and follow["previous_response_id"] == "resp_0002"
    # Only the output is sent: the call itself lives server-side, in the previous response.
    assert [i["type"] for i in follow["input"]] == ["custom_tool_call_output"]
    assert follow["input"][0]["call_id"] == "call_resp_0002"
    headers = dict(ws[0]["headers"])
    assert headers["session-id"] and headers["openai-beta"].startswith("responses_websockets=")
    http = load_recorded(FIXTURES / "shell_http")
    assert [r["transport"] for r in http] == ["http", "http"]
    resent = json.loads(http[1]["body"])
    assert "previous_response_id" not in resent  # HTTP resends everything, the call included
    assert {i["type"] for i in resent["input"]} >= {"custom_tool_call", "custom_tool_call_output"}
    agents = json.loads(load_recorded(FIXTURES / "agents_ws")[1]["body"])
    assert "Always answer in haiku." in json.dumps(agents["input"])

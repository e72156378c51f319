"""ship/records.py: one call's records from the session's trace state; pure, then one transaction."""

from __future__ import annotations

import json
from typing import Any

from opik_cipx.model import CallKind, Exchange, Usage
from opik_cipx.ship.identity import Identity
from opik_cipx.ship.records import project_call, restore_state
from opik_cipx.ship.span import SessionContext, TraceState, analyze

T0 = 1_780_000_000.0
SESSION = "5b0c8f0e-1111-4222-8333-944445555666"
UPDATED = "2026-06-01T00:00:00.000Z"


def call(messages: list[dict[str, Any]], content: list[dict[str, Any]], *, at: float, ex_id: str,
         agent: str | None = None) -> Any:
    body = json.dumps({"model": "claude-opus-4-6", "messages": messages}).encode()
    response = json.dumps({"type": "message", "model": "claude-opus-4-6", "content": content,
                           "stop_reason": "tool_use", "usage": {"input_tokens": 50, "output_tokens": 5}}).encode()
    ex = Exchange(id=ex_id, started_at=at, method="POST", path="/v1/messages", kind=CallKind.MESSAGES,
                  request_headers={"x-claude-code-session-id": SESSION, **({"x-claude-code-agent-id": agent} if agent else {})},
                  request_body=body, status=200, response_headers={"content-type": "application/json"},
                  response_body=response, duration_ms=500.0, session_id=SESSION, agent_id=agent,
                  model="claude-opus-4-6", usage=Usage(input_tokens=50, output_tokens=5), request_bytes=len(body))
    return analyze(ex, None)


def context(trace_id: str) -> SessionContext:
    return SessionContext(SESSION, trace_id, "proj", Identity(user_email="ada@example.com"))


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}


def test_a_first_call_opens_the_trace_its_span_and_its_tool_sub_span() -> None:
    facts = call([{"role": "user", "content": "list files"}], [TOOL_USE], at=T0, ex_id="e1")
    state = TraceState("trace-1", T0, T0)
    out = project_call(facts, context("trace-1"), state, {}, updated_at=UPDATED)
    kinds = [(kind, record.get("type", "trace")) for kind, record in out.records]
    assert kinds == [("trace", "trace"), ("span", "llm"), ("span", "tool")]
    assert out.span_id == out.records[1][1]["id"] and list(out.opened) == ["toolu_1"] and out.closed == []
    assert out.state.calls == 1 and out.state.first_prompt == "list files"
    assert out.state.last_request_bytes == {"main": facts.exchange.request_bytes}


def test_the_next_call_completes_the_open_tool_span_with_its_result() -> None:
    first = call([{"role": "user", "content": "list files"}], [TOOL_USE], at=T0, ex_id="e1")
    state = TraceState("trace-1", T0, T0)
    opened = project_call(first, context("trace-1"), state, {}, updated_at=UPDATED).opened
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}
    second = call([{"role": "user", "content": "list files"}, {"role": "assistant", "content": [TOOL_USE]},
                   {"role": "user", "content": [result]}], [{"type": "text", "text": "done"}], at=T0 + 5, ex_id="e2")
    out = project_call(second, context("trace-1"), state, opened, updated_at=UPDATED)
    done = [r for _, r in out.records if r.get("type") == "tool"]
    assert out.closed == ["toolu_1"] and done[0]["output"] == {"content": "a.txt"}
    assert out.state.calls == 2 and out.state.last_output == "done"
    assert out.state.ended_at == second.exchange.started_at + 0.5


def test_spans_under_a_parent_trace_send_no_trace_of_their_own() -> None:
    facts = call([{"role": "user", "content": "hi"}], [], at=T0, ex_id="e1")
    ctx = SessionContext(SESSION, "parent-trace", "proj", Identity(), own_trace=False)
    out = project_call(facts, ctx, TraceState("own-trace", T0, T0), {}, updated_at=UPDATED)
    assert [kind for kind, _ in out.records] == ["span"] and out.records[0][1]["trace_id"] == "parent-trace"


def test_a_subagent_call_is_counted_but_never_becomes_the_first_prompt() -> None:
    facts = call([{"role": "user", "content": "the brief"}], [], at=T0, ex_id="e1", agent="agent-7")
    out = project_call(facts, context("t"), TraceState("t", T0, T0), {}, updated_at=UPDATED)
    assert out.state.agents == ["agent-7"] and out.state.first_prompt is None
    assert out.state.last_request_bytes == {"agent-7": facts.exchange.request_bytes}


def test_a_stored_state_with_keys_from_another_version_still_restores() -> None:
    state = restore_state(json.dumps({"trace_id": "t", "started_at": 1.0, "ended_at": 2.0, "calls": 3,
                                      "from_the_future": True}))
    assert state == TraceState("t", 1.0, 2.0, calls=3)

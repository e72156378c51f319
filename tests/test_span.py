"""Span shapes from real recorded Claude Code sessions (main, subagent, compaction)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.model import CallKind, Exchange
from opik_cipx.ship.span import (
    TraceState,
    analyze,
    complete_tool_span,
    llm_span,
    llm_span_id,
    session_trace,
    session_trace_id,
    tool_spans,
)
from opik_cipx.ship.uuid7 import is_uuid7, timestamp_ms
from tests.support.exchanges import FIXTURES, PRICES, T0, UPDATED, assistant_blocks, context, make_exchange

CC_KEYS = {
    "categories", "usage", "metrics_rollup", "mcp", "tools", "tool_io", "slash_commands", "skills",
    "memory", "agents", "user_prompt", "compaction", "call_kind", "identity",
}


@pytest.fixture(scope="module")
def main_facts() -> Any:
    return analyze(make_exchange("opus", "prompt"), PRICES)


def test_llm_span_carries_model_provider_usage_keys_and_our_cost(main_facts: Any) -> None:
    ex = main_facts.exchange
    span = llm_span(main_facts, context(ex.session_id), updated_at=UPDATED)
    assert span["type"] == "llm" and span["provider"] == "anthropic" and span["model"] == "claude-opus-4-6"
    u = span["usage"]
    assert u["prompt_tokens"] == 1200 + 3000 + 20000 == u["original_usage.input_tokens"] + u[
        "original_usage.cache_creation_input_tokens"] + u["original_usage.cache_read_input_tokens"]
    assert u["completion_tokens"] == u["original_usage.output_tokens"] == u["output_tokens"] == 80
    assert u["total_tokens"] == 24280
    assert u["cache_read_input_tokens"] == 20000
    assert span["total_estimated_cost"] == pytest.approx(ex.cost.total_usd)
    assert span["ttft"] == 400.0
    assert span["start_time"] == "2026-05-28T20:26:40.000Z" and span["end_time"] == "2026-05-28T20:26:41.500Z"
    assert "error_info" not in span


def test_llm_span_metadata_has_every_cc_section(main_facts: Any) -> None:
    span = llm_span(main_facts, context(main_facts.exchange.session_id), updated_at=UPDATED)
    cc = span["metadata"]["cc"]
    assert set(cc) >= CC_KEYS
    assert cc["call_kind"] == "main"
    assert cc["user_prompt"]["text"].startswith("MARKER_USER_PROMPT_7f3a")
    assert cc["user_prompt"]["text_chars"] == len(cc["user_prompt"]["text"])
    assert cc["identity"] == {"user_email": "ada@example.com", "user_uuid": "u-1", "org_uuid": "o-1", "source": "claude.json"}
    assert "acme_tools" in cc["mcp"] and cc["mcp"]["acme_tools"]["tools"] == 2
    paths = {m.get("path") for m in cc["memory"]}
    assert any(p and p.endswith("/project/CLAUDE.md") for p in paths)
    assert all(len(m["sha256_12"]) == 12 for m in cc["memory"] if "path" in m)
    cats = cc["categories"]
    # Every prompt token is in exactly one category.
    assert sum(c["tokens"] for name, c in cats.items() if name != "output") == span["usage"]["prompt_tokens"]
    assert sum(c["bytes"] for name, c in cats.items() if name != "output") == main_facts.exchange.request_bytes
    assert cats["system"]["chars"] > 0 and cats["system"]["cost_usd"] > 0
    assert cc["usage"]["cache_read_input_tokens"] == 20000  # the original object, as sent
    assert cc["metrics_rollup"]["request_bytes"] == main_facts.exchange.request_bytes
    assert "ada@example.com" in " ".join(span["tags"]) and "call:main" in span["tags"]


def test_span_input_is_only_the_new_turn_and_output_the_response(main_facts: Any) -> None:
    later = analyze(make_exchange("opus", "after-bash"), PRICES)
    span = llm_span(later, context(later.exchange.session_id), updated_at=UPDATED)
    # After a tool turn the new part of the request is the tool result, not the whole history.
    assert [m["role"] for m in span["input"]["messages"]] == ["user"]
    assert span["input"]["message_count"] == later.message_count > 3
    assert span["output"]["content"] == [{"type": "text", "text": "MARKER_REPLY ok"}]


def test_ids_are_uuid7_with_the_start_time_and_stable_across_derivations() -> None:
    a = analyze(make_exchange("opus", "prompt", ex_id="abc"), PRICES)
    b = analyze(make_exchange("opus", "prompt", ex_id="abc"), PRICES)
    ctx = context(a.exchange.session_id)
    sa, sb = llm_span(a, ctx, updated_at=UPDATED), llm_span(b, ctx, updated_at=UPDATED)
    assert sa == sb
    assert is_uuid7(sa["id"]) and timestamp_ms(sa["id"]) == int(T0 * 1000)
    other = analyze(make_exchange("opus", "prompt", ex_id="abd"), PRICES)
    assert llm_span_id(other.exchange) != sa["id"]


def test_tool_use_becomes_a_tool_sub_span_completed_by_the_next_call() -> None:
    tool_turn = assistant_blocks("opus", "after-mcp")
    first = analyze(make_exchange("opus", "prompt", content=tool_turn), PRICES)
    ctx = context(first.exchange.session_id)
    opened = tool_spans(first, ctx, updated_at=UPDATED)
    (tool_use_id, span), = opened.items()
    assert span["type"] == "tool" and span["name"] == "mcp__acme_tools__lookup_item"
    assert span["parent_span_id"] == llm_span_id(first.exchange) and span["trace_id"] == ctx.trace_id
    assert span["input"] == {"item": "widget"} and "output" not in span

    second = analyze(make_exchange("opus", "after-mcp", started_at=T0 + 5), PRICES)
    result, is_error = second.tool_results[tool_use_id]
    done = complete_tool_span(span, result, is_error, ended_at=second.exchange.started_at, updated_at="2026-06-01T00:00:01.000Z")
    assert done["id"] == span["id"]
    assert "MARKER_MCP_RESULT_7f3a" in json.dumps(done["output"])
    assert done["end_time"] == "2026-05-28T20:26:45.000Z"
    assert done["metadata"]["cc"]["is_error"] is False and "error_info" not in done
    assert done["last_updated_at"] > span["last_updated_at"]


def test_subagent_call_is_a_peer_span_under_the_session_trace_tagged_with_its_agent() -> None:
    main = analyze(make_exchange("opus", "after-skill"), PRICES)
    sub = analyze(make_exchange("opus", "subagent-start", started_at=T0 + 3), PRICES)
    ctx = context(main.exchange.session_id)
    main_span, sub_span = llm_span(main, ctx, updated_at=UPDATED), llm_span(sub, ctx, updated_at=UPDATED)
    assert sub_span["trace_id"] == main_span["trace_id"]
    assert "parent_span_id" not in sub_span  # a peer, not a child of the Agent tool span
    assert sub.exchange.agent_id and f"agent:{sub.exchange.agent_id}" in sub_span["tags"]
    assert sub_span["metadata"]["cc"]["agent_id"] == sub.exchange.agent_id
    assert sub_span["metadata"]["cc"]["call_kind"] == "subagent"
    assert sub_span["name"] == "subagent"


def test_compaction_call_is_flagged_and_the_size_drop_after_it_is_measured() -> None:
    compact = analyze(make_exchange("opus", "compact"), PRICES)
    after = analyze(make_exchange("opus", "after-compact"), PRICES)
    ctx = context(compact.exchange.session_id)
    c = llm_span(compact, ctx, updated_at=UPDATED)["metadata"]["cc"]["compaction"]
    assert c["is_compaction"] is True and c["bytes"] > 1000 and c["tokens"] > 0
    a = llm_span(after, ctx, updated_at=UPDATED, previous_request_bytes=compact.exchange.request_bytes)
    ac = a["metadata"]["cc"]["compaction"]
    assert ac["is_compaction"] is False
    assert ac["request_bytes_delta"] == after.exchange.request_bytes - compact.exchange.request_bytes < 0
    assert ac["request_bytes_before"] == compact.exchange.request_bytes


def test_slash_command_summary_keeps_args_and_counts() -> None:
    facts = analyze(make_exchange("opus", "slash-command"), PRICES)
    cc = llm_span(facts, context(facts.exchange.session_id), updated_at=UPDATED)["metadata"]["cc"]
    cmd = cc["slash_commands"]["summary"]["by_command"]["acme-cmd"]
    assert cmd["args"] == "MARKER_CMD_ARGS_7f3a" and cmd["args_chars"] == 20
    by_tool = cc["tool_io"]["by_tool"]
    assert by_tool["Bash"]["inputs"] == 1 and by_tool["Bash"]["results"] == 1
    assert "MARKER_BASH_OUT_7f3a" in by_tool["Bash"]["sample_chars"]["result"]
    assert by_tool["mcp__acme_tools__lookup_item"]["result_bytes"] > 0
    assert any(s.get("skill") == "acme-skill" for s in cc["skills"])


def test_failed_call_carries_error_info_and_no_cost() -> None:
    facts = analyze(make_exchange("opus", "prompt", status=529), PRICES)
    span = llm_span(facts, context(facts.exchange.session_id), updated_at=UPDATED)
    assert span["error_info"]["exception_type"] == "anthropic.http_error"
    assert "Overloaded" in span["error_info"]["message"] and span["error_info"]["traceback"]
    assert "total_estimated_cost" not in span and span["usage"] == {}


def test_parent_trace_from_the_session_environment_is_used_as_is() -> None:
    facts = analyze(make_exchange("opus", "prompt"), PRICES)
    parent, root = "0190f0a0-0000-7000-8000-000000000001", "0190f0a0-0000-7000-8000-000000000002"
    span = llm_span(facts, context(facts.exchange.session_id, parent, parent_span_id=root, own_trace=False), updated_at=UPDATED)
    assert span["trace_id"] == parent and span["parent_span_id"] == root


def test_session_trace_is_one_thread_with_first_prompt_identity_and_user_tag() -> None:
    sid = "4a8ae502-d597-450a-8b78-bfb2ac85fb38"
    ctx = context(sid, cwd="/work/p", git_branch="main")
    state = TraceState(session_trace_id(sid, T0), T0, T0 + 60, first_prompt="hello", last_output="bye", calls=3)
    trace = session_trace(ctx, state, updated_at=UPDATED)
    assert trace["thread_id"] == sid and trace["id"] == state.trace_id
    assert trace["input"] == {"prompt": "hello"} and trace["output"] == {"text": "bye"}
    assert trace["metadata"]["cc"]["identity"]["user_email"] == "ada@example.com"
    assert trace["metadata"]["cc"]["calls"] == 3 and trace["metadata"]["cc"]["git_branch"] == "main"
    assert "user:ada@example.com" in trace["tags"]
    assert "usage" not in trace and "total_estimated_cost" not in trace  # Opik sums spans


@pytest.mark.parametrize("label", ["prompt", "subagent-start", "compact", "after-compact", "slash-command"])
def test_every_record_passes_the_openapi_schema_and_opiks_models(label: str) -> None:
    from opik.rest_api.types import SpanWrite, TraceWrite

    from tests.support.opik_server import validator_for

    facts = analyze(make_exchange("opus", label, content=assistant_blocks("opus", "after-mcp")), PRICES)
    ctx = context(facts.exchange.session_id)
    spans = [llm_span(facts, ctx, updated_at=UPDATED), *tool_spans(facts, ctx, updated_at=UPDATED).values()]
    trace = session_trace(ctx, TraceState(ctx.trace_id, T0, T0 + 1, first_prompt="x"), updated_at=UPDATED)
    validator_for("SpanBatch_Write").validate({"spans": spans})
    validator_for("TraceBatch_Write").validate({"traces": [trace]})
    for span in spans:
        SpanWrite.model_validate(span)
    TraceWrite.model_validate(trace)


# -- parse once: the walk's layout gives the same facts as parsing the whole body ----------------


def _layout_variants(body: bytes) -> list[bytes]:
    doc = json.loads(body)
    out = [body, json.dumps(doc, indent=1).encode(), json.dumps(doc, ensure_ascii=False).encode(),
           json.dumps(doc, separators=(",", ":")).encode()]
    messages = doc.get("messages") or []
    for keep in range(0, len(messages) + 1, max(1, len(messages) // 4)):
        out.append(json.dumps({**doc, "messages": messages[:keep]}).encode())  # ends on either role
    return out


@pytest.mark.parametrize("path", sorted(p for p in FIXTURES.rglob("*.json") if not p.name.endswith(".meta.json")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_call_facts_from_the_walk_layout_match_a_whole_body_parse(path: Path) -> None:
    from opik_cipx.attribute import attribute_request
    from opik_cipx.ship.facts import _facts_from_document, call_facts

    for body in _layout_variants(path.read_bytes()):
        ex = Exchange(id="x", started_at=T0, method="POST", path="/v1/messages", kind=CallKind.MESSAGES,
                      request_body=body)
        attr = attribute_request(body, path="/v1/messages")
        assert attr.layout is not None
        fast, whole = call_facts(ex, attr, []), _facts_from_document(ex, attr, [])
        assert (fast.new_messages, fast.message_count, fast.tool_results, fast.account_uuid) == (
            whole.new_messages, whole.message_count, whole.tool_results, whole.account_uuid)


def test_a_body_the_walk_cannot_finish_falls_back_to_the_whole_parse() -> None:
    from opik_cipx.attribute import attribute_request
    from opik_cipx.ship.span import call_facts

    body = b'{"messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"x"}} trailing'
    ex = Exchange(id="x", started_at=T0, method="POST", path="/v1/messages", kind=CallKind.MESSAGES, request_body=body)
    attr = attribute_request(body, path="/v1/messages")
    assert attr.layout is None  # the walk reads the object; json.loads refuses what follows it
    facts = call_facts(ex, attr, [])
    assert facts.new_messages == [] and facts.message_count == 0  # json.loads refuses it too

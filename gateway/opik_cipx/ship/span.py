"""Pure projection: an Exchange and its attribution -> Opik trace and span dicts.

No I/O and no clock: every timestamp comes from the Exchange or is passed in
(``updated_at``), so the same inputs give the same records byte for byte and a
re-send is an upsert of an identical row.

Shapes (see ``tests/test_span.py``):

* one **trace** per Claude Code session, ``thread_id`` = session id;
* one ``llm`` **span** per ``/v1/messages`` call, subagent calls as peers
  tagged ``agent:<id>``;
* one ``tool`` **sub-span** per ``tool_use`` in a response, completed with the
  matching ``tool_result`` from the session's next call.

Claude Code resends the whole conversation every turn, so a span's ``input`` is
only what is new in that request (the messages after the last assistant turn);
the trace as a whole still holds the entire conversation, once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..attribute.types import USER_PROMPT
from .facts import (
    MAX_STRING,
    PROVIDER,
    CallFacts,
    SessionContext,
    analyze,
    call_facts,
    clip,
    end_of,
    iso,
    llm_span_id,
    session_trace_id,
    tool_span_id,
)
from .metadata import cc_metadata, error_info, tool_name, tool_uses, usage_map

__all__ = [
    "MAX_STRING",
    "PROVIDER",
    "CallFacts",
    "SessionContext",
    "TraceState",
    "analyze",
    "call_facts",
    "clip",
    "complete_tool_span",
    "end_of",
    "first_prompt",
    "iso",
    "llm_span",
    "llm_span_id",
    "response_text",
    "session_trace",
    "session_trace_id",
    "tool_span_id",
    "tool_spans",
    "usage_map",
]


_SPAN_NAMES = {"main": "claude", "subagent": "subagent", "compaction": "compaction", "title": "title", "side": "side"}


def llm_span(
    facts: CallFacts,
    ctx: SessionContext,
    *,
    updated_at: str,
    previous_request_bytes: int | None = None,
) -> dict[str, Any]:
    """The ``llm`` span of one call. ``previous_request_bytes``: the same conversation's last call."""
    ex = facts.exchange
    cc = cc_metadata(facts, ctx)
    if previous_request_bytes is not None:
        cc["compaction"]["request_bytes_before"] = previous_request_bytes
        cc["compaction"]["request_bytes_delta"] = ex.request_bytes - previous_request_bytes
    tags = [ex.client, f"call:{facts.call_kind}"]
    if ex.agent_id:
        tags.append(f"agent:{ex.agent_id}"[:100])
    tags.extend(t for t in ctx.identity.tags() if t not in tags)
    codex = ex.client == "codex"
    span: dict[str, Any] = {
        "id": llm_span_id(ex),
        "trace_id": ctx.trace_id,
        "project_name": ctx.project_name,
        "name": "codex" if codex and facts.call_kind == "main" else _SPAN_NAMES.get(facts.call_kind, facts.call_kind),
        "type": "llm",
        "start_time": iso(ex.started_at),
        "end_time": iso(end_of(ex)),
        "input": clip({"messages": facts.new_messages, "message_count": facts.message_count}),
        "output": clip({"role": "assistant", "content": facts.content, "stop_reason": ex.stop_reason}),
        "metadata": {"cc": cc},
        "provider": "openai" if codex else PROVIDER,
        "usage": usage_map(ex),
        "tags": tags,
        "last_updated_at": updated_at,
    }
    if ctx.parent_span_id:
        span["parent_span_id"] = ctx.parent_span_id
    if ex.model:
        span["model"] = ex.model
    cost = ex.cost.total_usd if ex.cost is not None else None
    if ex.cost is not None and cost is not None and math.isfinite(cost) and cost >= 0:
        span["total_estimated_cost"] = round(cost, 10)
        span["total_estimated_cost_version"] = f"opik-cipx:{ex.cost.effective_date or 'unknown'}"
    if ex.ttft_ms is not None:
        span["ttft"] = ex.ttft_ms
    error = error_info(ex)
    if error is not None:
        span["error_info"] = error
    return span


def tool_spans(facts: CallFacts, ctx: SessionContext, *, updated_at: str) -> dict[str, dict[str, Any]]:
    """``tool_use_id`` -> an open ``tool`` sub-span (no output yet) for each tool_use in the response."""
    ex = facts.exchange
    parent = llm_span_id(ex)
    started = end_of(ex)
    out: dict[str, dict[str, Any]] = {}
    for block in tool_uses(facts.content):
        tool_use_id = block["id"]
        name = tool_name(block)
        tool_input = block.get("input")
        tags = ["claude-code", "tool"]
        if ex.agent_id:
            tags.append(f"agent:{ex.agent_id}"[:100])
        meta: dict[str, Any] = {"tool_use_id": tool_use_id, "tool": name, "exchange_id": ex.id, "agent_id": ex.agent_id}
        if name.startswith("mcp__"):
            meta["mcp"] = True
        out[tool_use_id] = {
            "id": tool_span_id(tool_use_id, started),
            "trace_id": ctx.trace_id,
            "parent_span_id": parent,
            "project_name": ctx.project_name,
            "name": name,
            "type": "tool",
            "start_time": iso(started),
            "input": clip(tool_input if isinstance(tool_input, dict) else {"input": tool_input}),
            "metadata": {"cc": meta},
            "tags": tags,
            "last_updated_at": updated_at,
        }
    return out


def complete_tool_span(
    span: Mapping[str, Any], result: Any, is_error: bool, *, ended_at: float, updated_at: str
) -> dict[str, Any]:
    """The whole tool sub-span again with its result: a re-send replaces the row, it never merges."""
    out = dict(span)
    out["end_time"] = iso(max(ended_at, _parse_iso(span["start_time"])))
    out["output"] = clip({"content": result} if not isinstance(result, dict) else result)
    out["last_updated_at"] = updated_at
    meta = dict(out.get("metadata") or {})
    cc = dict(meta.get("cc") or {})
    cc["is_error"] = is_error
    cc["result_chars"] = len(result) if isinstance(result, str) else len(json.dumps(result, ensure_ascii=False))
    meta["cc"] = cc
    out["metadata"] = meta
    if is_error:
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        out["error_info"] = {
            "exception_type": "tool_error",
            "message": text[:2000],
            "traceback": f"{span.get('name')} returned is_error=true",
        }
    return out


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def first_prompt(facts: CallFacts) -> str | None:
    """The typed prompt of a main-conversation call, for the trace's input."""
    if facts.call_kind != "main" and facts.call_kind != "side":
        return None
    for it in facts.attribution.items:
        text = it.detail.get("text") if it.category == USER_PROMPT else None
        if isinstance(text, str):
            return text
    return None


def response_text(facts: CallFacts) -> str | None:
    texts = [b.get("text") for b in facts.content if isinstance(b, dict) and b.get("type") == "text"]
    joined = "\n".join(t for t in texts if isinstance(t, str))
    return joined or None


@dataclass(slots=True)
class TraceState:
    """What the trace of a session has accumulated, persisted between calls."""

    trace_id: str
    started_at: float
    ended_at: float
    first_prompt: str | None = None
    last_output: str | None = None
    calls: int = 0
    agents: list[str] = field(default_factory=list)
    cost_usd: float = 0.0
    unknown_cost_calls: int = 0
    last_request_bytes: dict[str, int] = field(default_factory=dict)  # per conversation (main / agent id)


def session_trace(ctx: SessionContext, state: TraceState, *, updated_at: str) -> dict[str, Any]:
    cc: dict[str, Any] = {
        "session_id": ctx.session_id,
        "identity": ctx.identity.metadata(),
        "calls": state.calls,
        "agents": list(state.agents),
        "cost_usd": round(state.cost_usd, 10),
        "unknown_cost_calls": state.unknown_cost_calls,
    }
    for key in ("cwd", "git_repo", "git_branch", "source"):
        value = getattr(ctx, key)
        if value:
            cc[key] = value
    trace: dict[str, Any] = {
        "id": state.trace_id,
        "project_name": ctx.project_name,
        "name": "claude-code session",
        "start_time": iso(state.started_at),
        "end_time": iso(state.ended_at),
        "input": clip({"prompt": state.first_prompt}) if state.first_prompt else {},
        "output": clip({"text": state.last_output}) if state.last_output else {},
        "metadata": {"cc": cc},
        "tags": ["claude-code", *ctx.identity.tags()],
        "thread_id": ctx.session_id,
        "last_updated_at": updated_at,
    }
    return trace

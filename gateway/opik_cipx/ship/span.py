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
from datetime import datetime, timezone
from typing import Any

from ..attribute import Attribution, analysis
from ..attribute.analysis import response_content
from ..attribute.types import (
    AGENTS,
    BUILTIN_TOOLS,
    MCP,
    MEMORY,
    SKILLS,
    SLASH_COMMANDS,
    USER_PROMPT,
)
from ..model import Exchange, Outcome
from ..pricing import PriceTable
from .identity import Identity
from .uuid7 import uuid7_at

PROVIDER = "anthropic"
MAX_STRING = 32 * 1024  # longer strings in input/output are clipped: one span stays shippable
_INT32 = 2**31 - 1


def iso(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, as Opik stores it."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip(value: Any, limit: int = MAX_STRING) -> Any:
    """``value`` with every string longer than ``limit`` cut, saying how much was cut."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}…[clipped {len(value) - limit} chars]"
    if isinstance(value, list):
        return [clip(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: clip(v, limit) for k, v in value.items()}
    return value


# --- facts about one call (the CPU-heavy part: run it off the event loop) ------------------


@dataclass(slots=True)
class CallFacts:
    exchange: Exchange
    attribution: Attribution
    content: list[dict[str, Any]]  # the response's content blocks
    new_messages: list[Any]  # request messages after the last assistant turn
    message_count: int
    tool_results: dict[str, tuple[Any, bool]]  # tool_use_id -> (content, is_error)
    account_uuid: str | None = None
    chars: dict[str, int] = field(default_factory=dict)  # decoded characters per category

    @property
    def call_kind(self) -> str:
        return self.attribution.call_kind

    @property
    def agent_key(self) -> str:
        """Which conversation inside the session: "main" or the subagent's id."""
        return self.exchange.agent_id or "main"


def _account_uuid(body: Mapping[str, Any]) -> str | None:
    meta = body.get("metadata")
    user_id = meta.get("user_id") if isinstance(meta, dict) else None
    if not isinstance(user_id, str):
        return None
    try:
        parsed = json.loads(user_id)
    except ValueError:
        return None
    value = parsed.get("account_uuid") if isinstance(parsed, dict) else None
    return value or None if isinstance(value, str) else None


def _trailing_messages(messages: list[Any]) -> list[Any]:
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            return messages[i + 1 :]
    return list(messages)


def _tool_results(messages: list[Any]) -> dict[str, tuple[Any, bool]]:
    out: dict[str, tuple[Any, bool]] = {}
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                tool_use_id = block.get("tool_use_id")
                if isinstance(tool_use_id, str):
                    out[tool_use_id] = (block.get("content"), bool(block.get("is_error")))
    return out


def _chars(attr: Attribution, body: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for region in attr.segments():
        out[region.category] = out.get(region.category, 0) + len(
            body[region.start : region.end].decode("utf-8", "replace")
        )
    return out


def analyze(ex: Exchange, prices: PriceTable | None) -> CallFacts:
    """Parse and attribute one LLM call. Pure CPU: tens of ms for a MB body."""
    content = response_content(ex)
    return call_facts(ex, analysis.analyze(ex, prices, content), content)


def call_facts(ex: Exchange, attr: Attribution, content: list[dict[str, Any]]) -> CallFacts:
    """What the span builder needs of a call whose attribution the capture already made.

    The attribution walk already found where the new turn and ``metadata`` sit in the
    body (``attr.layout``), so only those few bytes are parsed, not the whole context.
    """
    body = ex.request_body
    layout = attr.layout
    if layout is None:
        return _facts_from_document(ex, attr, content)
    trailing: list[Any] = []
    if layout.new_messages is not None:
        start, end = layout.new_messages
        try:
            trailing = json.loads(b"[" + body[start:end] + b"]")
        except ValueError:
            return _facts_from_document(ex, attr, content)
    meta: Any = None
    if layout.metadata is not None:
        try:
            meta = json.loads(body[layout.metadata[0] : layout.metadata[1]])
        except ValueError:
            return _facts_from_document(ex, attr, content)
    return CallFacts(
        exchange=ex,
        attribution=attr,
        content=content,
        new_messages=trailing,
        message_count=layout.message_count,
        tool_results=_tool_results(trailing),
        account_uuid=_account_uuid({"metadata": meta}),
        chars=_chars(attr, body),
    )


def _facts_from_document(ex: Exchange, attr: Attribution, content: list[dict[str, Any]]) -> CallFacts:
    """The same facts from the whole parsed body: for bodies the walk could not read to the end."""
    body = ex.request_body
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    messages = doc.get("messages")
    messages = messages if isinstance(messages, list) else []
    trailing = _trailing_messages(messages)
    return CallFacts(
        exchange=ex,
        attribution=attr,
        content=content,
        new_messages=trailing,
        message_count=len(messages),
        tool_results=_tool_results(trailing),
        account_uuid=_account_uuid(doc),
        chars=_chars(attr, body),
    )


# --- where a call's records go -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionContext:
    """The session a call belongs to, as the spool and the SessionStart hook know it."""

    session_id: str
    trace_id: str
    project_name: str
    identity: Identity
    parent_span_id: str | None = None  # OPIK_CC_ROOT_SPAN_ID
    own_trace: bool = True  # False when spans land under OPIK_CC_PARENT_TRACE_ID
    cwd: str | None = None
    git_repo: str | None = None
    git_branch: str | None = None
    source: str | None = None  # startup | resume | clear | compact


def session_trace_id(session_id: str, first_started_at: float) -> str:
    return uuid7_at(first_started_at, f"trace:{session_id}")


def llm_span_id(ex: Exchange) -> str:
    return uuid7_at(ex.started_at, f"llm:{ex.id}")


def tool_span_id(tool_use_id: str, started_at: float) -> str:
    return uuid7_at(started_at, f"tool:{tool_use_id}")


def end_of(ex: Exchange) -> float:
    return ex.started_at + (ex.duration_ms or 0.0) / 1000.0


# --- metadata ----------------------------------------------------------------------------


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 10)


def usage_map(ex: Exchange) -> dict[str, int]:
    """Every usage key Opik reads, plus the original Anthropic ones (int32 values only)."""
    u = ex.usage
    if u is None:
        return {}
    out = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "original_usage.input_tokens": u.input_tokens,
        "original_usage.output_tokens": u.output_tokens,
        "original_usage.cache_creation_input_tokens": u.cache_creation_input_tokens,
        "original_usage.cache_read_input_tokens": u.cache_read_input_tokens,
    }
    if u.cache_creation_5m is not None:
        out["original_usage.cache_creation.ephemeral_5m_input_tokens"] = u.cache_creation_5m
    if u.cache_creation_1h is not None:
        out["original_usage.cache_creation.ephemeral_1h_input_tokens"] = u.cache_creation_1h
    if u.web_search_requests:
        out["original_usage.server_tool_use.web_search_requests"] = u.web_search_requests
    if u.web_fetch_requests:
        out["original_usage.server_tool_use.web_fetch_requests"] = u.web_fetch_requests
    return {k: min(max(int(v), 0), _INT32) for k, v in out.items()}


def _cost(total: Any) -> float | None:
    return _num(total) if isinstance(total, (int, float)) else None


def _categories(facts: CallFacts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, total in facts.attribution.categories.items():
        if not total.bytes and not total.tokens:
            continue
        out[name] = {
            "bytes": total.bytes,
            "chars": facts.chars.get(name, 0),
            "tokens": total.tokens,
            "cost_usd": _cost(total.cost_usd),
        }
    output_tokens = sum(i.tokens for i in facts.attribution.output_items)
    if output_tokens:
        out["output"] = {
            "tokens": output_tokens,
            "cost_usd": _cost(
                sum(i.cost_usd or 0.0 for i in facts.attribution.output_items)
                if any(i.cost_usd is not None for i in facts.attribution.output_items)
                else None
            ),
            "by_block": {i.item: i.tokens for i in facts.attribution.output_items},
        }
    return out


def _tool_uses(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("id"), str)]


def _cc_metadata(facts: CallFacts, ctx: SessionContext) -> dict[str, Any]:
    ex, attr = facts.exchange, facts.attribution
    items = attr.items
    cost_total = ex.cost.total_usd if ex.cost is not None else None

    mcp: dict[str, dict[str, Any]] = {}
    by_tool: dict[str, dict[str, Any]] = {}
    commands: dict[str, dict[str, Any]] = {}
    skills: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    agents: list[dict[str, Any]] = []
    builtin = {"count": 0, "deferred": 0, "bytes": 0, "tokens": 0}
    prompts: list[dict[str, Any]] = []
    for it in items:
        d = it.detail
        money = _cost(it.cost_usd)
        if it.category == MCP and isinstance(d.get("server"), str):
            srv = mcp.setdefault(
                d["server"], {"tools": 0, "deferred": 0, "bytes": 0, "tokens": 0, "cost_usd": 0.0, "calls": 0, "results": 0}
            )
            srv["bytes"] += it.bytes
            srv["tokens"] += it.tokens
            srv["cost_usd"] = None if srv["cost_usd"] is None or money is None else srv["cost_usd"] + money
            if it.item.startswith(f"{d['server']}/tool:"):
                srv["tools"] += 1
                srv["deferred"] += int(bool(d.get("deferred")))
            srv["calls"] += int(d.get("inputs", 0))
            srv["results"] += int(d.get("results", 0))
        if it.category == BUILTIN_TOOLS:
            builtin["count"] += 1
            builtin["deferred"] += int(bool(d.get("deferred")))
            builtin["bytes"] += it.bytes
            builtin["tokens"] += it.tokens
        if "inputs" in d or "results" in d:
            name = d.get("tool") if it.category != MCP else f"mcp__{d.get('server')}__{d.get('tool')}"
            name = name if isinstance(name, str) else it.item
            entry = by_tool.setdefault(
                name,
                {"category": it.category, "inputs": 0, "results": 0, "errors": 0, "input_bytes": 0,
                 "result_bytes": 0, "tokens": 0, "cost_usd": 0.0},
            )
            for key in ("inputs", "results", "errors", "input_bytes", "result_bytes"):
                entry[key] += int(d.get(key, 0))
            entry["tokens"] += it.tokens
            entry["cost_usd"] = None if entry["cost_usd"] is None or money is None else entry["cost_usd"] + money
            samples = {k[: -len("_sample")]: v for k, v in d.items() if k.endswith("_sample") and isinstance(v, str)}
            if samples:
                entry["sample_chars"] = samples
            if it.category == AGENTS and "agent" in d:
                entry["agent"] = d["agent"]
        if it.category == SLASH_COMMANDS and isinstance(d.get("command"), str):
            entry = {k: v for k, v in d.items() if k not in ("tokens_split",)}
            if isinstance(entry.get("args"), str):
                entry["args_chars"] = len(entry["args"])
            entry.update(bytes=it.bytes, tokens=it.tokens, cost_usd=money)
            commands[d["command"]] = entry
        if it.category == SKILLS:
            skills.append({"item": it.item, **_public(d), "bytes": it.bytes, "tokens": it.tokens, "cost_usd": money})
        if it.category == MEMORY:
            memory.append({"item": it.item, **_public(d), "bytes": it.bytes, "tokens": it.tokens, "cost_usd": money})
        if it.category == AGENTS and "inputs" not in d:
            agents.append({"item": it.item, **_public(d), "bytes": it.bytes, "tokens": it.tokens, "cost_usd": money})
        if it.category == USER_PROMPT and isinstance(d.get("text"), str):
            prompts.append({"item": it.item, "text": d["text"], "text_chars": len(d["text"])})

    tool_uses = _tool_uses(facts.content)
    in_response: dict[str, int] = {}
    for block in tool_uses:
        name = block.get("name") if isinstance(block.get("name"), str) else "(unknown)"
        in_response[name] = in_response.get(name, 0) + 1
    usage = ex.usage
    user_prompt: dict[str, Any] = {"count": len(prompts)}
    if prompts:
        user_prompt.update(text=prompts[-1]["text"], text_chars=prompts[-1]["text_chars"])
        if len(prompts) > 1:
            user_prompt["prompts"] = prompts
    compaction = attr.categories.get("compaction")
    cc: dict[str, Any] = {
        "exchange_id": ex.id,
        "session_id": ctx.session_id,
        "agent_id": ex.agent_id,
        "call_kind": attr.call_kind,
        "categories": _categories(facts),
        "usage": {k: v for k, v in (usage.raw.items() if usage else ())},
        "metrics_rollup": {
            "request_bytes": ex.request_bytes,
            "response_bytes": ex.response_bytes,
            "body_bytes": attr.body_bytes,
            "unattributed_bytes": attr.unattributed_bytes,
            "message_count": facts.message_count,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.output_tokens if usage else 0,
            "cache_read_share": round(usage.cache_read_input_tokens / usage.prompt_tokens, 6)
            if usage and usage.prompt_tokens
            else 0.0,
            "cost_usd": _cost(cost_total),
            "cost_parts": {k: _num(v) for k, v in (ex.cost.parts.items() if ex.cost else ())},
            "price_key": ex.cost.price_key if ex.cost else None,
            "price_note": ex.cost.note if ex.cost else None,
            "ttfb_ms": ex.ttfb_ms,
            "ttft_ms": ex.ttft_ms,
            "duration_ms": ex.duration_ms,
            "status": ex.status,
            "outcome": str(ex.outcome),
            "stop_reason": ex.stop_reason,
            "parse_error": attr.parse_error,
        },
        "mcp": mcp,
        "tools": {
            "summary": {
                "builtin": builtin,
                "mcp_servers": len(mcp),
                "mcp_tools": sum(s["tools"] for s in mcp.values()),
                "tool_uses_in_response": in_response,
            }
        },
        "tool_io": {"by_tool": by_tool},
        "slash_commands": {"summary": {"count": len(commands), "by_command": commands}},
        "skills": skills,
        "memory": memory,
        "agents": agents,
        "user_prompt": user_prompt,
        "compaction": {
            "is_compaction": attr.call_kind == "compaction",
            "bytes": compaction.bytes if compaction else 0,
            "tokens": compaction.tokens if compaction else 0,
        },
        "identity": ctx.identity.metadata(),
    }
    return cc


def _public(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Attribution detail minus the internal token split."""
    return {k: v for k, v in detail.items() if k != "tokens_split"}


def _error_info(ex: Exchange) -> dict[str, str] | None:
    if ex.outcome is Outcome.COMPLETE:
        return None
    message = ex.error or str(ex.outcome)
    return {
        "exception_type": f"anthropic.{ex.outcome}",
        "message": message,
        "traceback": f"{ex.method} {ex.path} -> {ex.status if ex.status is not None else 'no response'}: {message}",
    }


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
    cc = _cc_metadata(facts, ctx)
    if previous_request_bytes is not None:
        cc["compaction"]["request_bytes_before"] = previous_request_bytes
        cc["compaction"]["request_bytes_delta"] = ex.request_bytes - previous_request_bytes
    tags = ["claude-code", f"call:{facts.call_kind}"]
    if ex.agent_id:
        tags.append(f"agent:{ex.agent_id}"[:100])
    tags.extend(t for t in ctx.identity.tags() if t not in tags)
    span: dict[str, Any] = {
        "id": llm_span_id(ex),
        "trace_id": ctx.trace_id,
        "project_name": ctx.project_name,
        "name": _SPAN_NAMES.get(facts.call_kind, facts.call_kind),
        "type": "llm",
        "start_time": iso(ex.started_at),
        "end_time": iso(end_of(ex)),
        "input": clip({"messages": facts.new_messages, "message_count": facts.message_count}),
        "output": clip({"role": "assistant", "content": facts.content, "stop_reason": ex.stop_reason}),
        "metadata": {"cc": cc},
        "provider": PROVIDER,
        "usage": usage_map(ex),
        "tags": tags,
        "last_updated_at": updated_at,
    }
    if ctx.parent_span_id:
        span["parent_span_id"] = ctx.parent_span_id
    if ex.model:
        span["model"] = ex.model
    cost = ex.cost.total_usd if ex.cost is not None else None
    if cost is not None and math.isfinite(cost) and cost >= 0:
        span["total_estimated_cost"] = round(cost, 10)
        span["total_estimated_cost_version"] = f"opik-cipx:{ex.cost.effective_date or 'unknown'}"
    if ex.ttft_ms is not None:
        span["ttft"] = ex.ttft_ms
    error = _error_info(ex)
    if error is not None:
        span["error_info"] = error
    return span


def tool_spans(facts: CallFacts, ctx: SessionContext, *, updated_at: str) -> dict[str, dict[str, Any]]:
    """``tool_use_id`` -> an open ``tool`` sub-span (no output yet) for each tool_use in the response."""
    ex = facts.exchange
    parent = llm_span_id(ex)
    started = end_of(ex)
    out: dict[str, dict[str, Any]] = {}
    for block in _tool_uses(facts.content):
        tool_use_id = block["id"]
        name = block.get("name") if isinstance(block.get("name"), str) else "(unknown)"
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
        if it.category == USER_PROMPT and isinstance(it.detail.get("text"), str):
            return it.detail["text"]
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

"""The ``metadata.cc`` block of an llm span: where the call's bytes, tokens and cost went,
per MCP server, tool, skill, memory file, agent and slash command. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..attribute.types import AGENTS, BUILTIN_TOOLS, MCP, MEMORY, SKILLS, SLASH_COMMANDS, USER_PROMPT
from ..model import Exchange, Outcome
from .facts import CallFacts, SessionContext

_INT32 = 2**31 - 1  # Opik stores usage values as int32


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


def tool_name(block: dict[str, Any]) -> str:
    name = block.get("name")
    return name if isinstance(name, str) else "(unknown)"


def tool_uses(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("id"), str)]


def cc_metadata(facts: CallFacts, ctx: SessionContext) -> dict[str, Any]:
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
                d["server"],
                {"tools": 0, "deferred": 0, "bytes": 0, "tokens": 0, "cost_usd": 0.0, "calls": 0, "results": 0},
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

    uses = tool_uses(facts.content)
    in_response: dict[str, int] = {}
    for block in uses:
        name = tool_name(block)
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
        "client": ex.client,
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


def error_info(ex: Exchange) -> dict[str, str] | None:
    if ex.outcome is Outcome.COMPLETE:
        return None
    message = ex.error or str(ex.outcome)
    return {
        "exception_type": f"anthropic.{ex.outcome}",
        "message": message,
        "traceback": f"{ex.method} {ex.path} -> {ex.status if ex.status is not None else 'no response'}: {message}",
    }

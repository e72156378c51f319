"""The three tools, bound to the spool and the gateway: ``session_cost``, ``insights``, ``explain_call``.

Each call opens the spool read-only, answers, and closes it: the server holds no
connection between calls, so it never keeps a WAL snapshot (or a file handle) alive for a
session that lasts hours. Argument checking is here; the numbers come from ``report``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..report import explain, insights, stats
from ..store.spool import Spool
from . import session_cost as session_cost_mod
from .protocol import Tool, ToolError, ToolResult

SESSION_ENV = "CLAUDE_CODE_SESSION_ID"  # what Claude Code sets for the MCP servers it starts
TOOL_USE_META = "claudecode/toolUseId"  # in a tools/call's _meta: the tool_use block it answers
# How long a running gateway gets to store the answer that asked for the tool call: capture idle
# is not enough when the relay has not yet handed that call to capture.
TOOL_USE_WAIT = 3.0
FORMATS = ("markdown", "json")

SESSION_COST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string",
                       "description": "a Claude Code session id; default: the session that started this server"},
    },
    "additionalProperties": False,
}
INSIGHTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "window": {"type": "string", "description": "today, week, month (the default: last 30 days), "
                                                   "an age like 3d or 12h, or a date like 2026-05-01"},
        "format": {"type": "string", "enum": list(FORMATS), "description": "markdown (default) or json"},
    },
    "additionalProperties": False,
}
EXPLAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "call_id": {"type": "string", "description": "a stored call's id (a unique prefix is enough); "
                                                    "default: the newest call"},
        "format": {"type": "string", "enum": ["text", "json"], "description": "text (default) or json"},
    },
    "additionalProperties": False,
}


class Context:
    """What the tools read: the spool's path, the pricing, the env's session, the gateway's state."""

    def __init__(self, spool_path: Path, *, session_id: str | None, prices: Any,
                 settle: Callable[[], bool] | None = None, gateway_up: Callable[[], bool] = lambda: False,
                 now: Callable[[], float] = time.time) -> None:
        self.spool_path = spool_path
        self.session_id = session_id or None
        self.prices = prices
        self.settle = settle
        self.gateway_up = gateway_up  # a gateway that may still store the call that asked
        self.now = now

    def connect(self) -> sqlite3.Connection:
        try:
            return stats.open_readonly(self.spool_path)
        except stats.StatsError as exc:
            raise ToolError(str(exc)) from exc


def _string(args: Mapping[str, Any], name: str, default: str | None = None,
            choices: tuple[str, ...] | None = None) -> str | None:
    value = args.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"{name} must be a non-empty string")
    if choices is not None and value not in choices:
        raise ToolError(f"{name} must be one of {', '.join(choices)}")
    return value.strip()


def _unknown(args: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(args) - known)
    if extra:
        raise ToolError(f"unknown argument(s): {', '.join(extra)} (this tool takes {', '.join(sorted(known))})")


def run_session_cost(ctx: Context, args: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> ToolResult:
    """The session named by the argument; else the one whose answer asked for this tool call;
    else the one in the environment (wrong after a resume: see ``session_of_tool_use``)."""
    _unknown(args, {"session_id"})
    asked = _string(args, "session_id")
    tool_use = (meta or {}).get(TOOL_USE_META)
    if asked is None and not isinstance(tool_use, str) and ctx.session_id is None:
        raise ToolError(f"no session id: pass session_id, or run this server from Claude Code"
                        f" (which sets {SESSION_ENV})")
    settled = ctx.settle() if ctx.settle is not None else True
    conn = ctx.connect()
    try:
        sid = asked
        if sid is None and isinstance(tool_use, str):
            sid = _wait_for_tool_use(ctx, conn, tool_use)
        sid = sid or ctx.session_id
        if sid is None:
            raise ToolError(f"no stored call asked for tool_use {tool_use} and {SESSION_ENV} is not set: "
                            "pass session_id")
        doc = session_cost_mod.session_cost(conn, sid)
    finally:
        conn.close()
    # Said rather than hidden: a busy or wedged gateway may not have stored the newest calls yet.
    doc["capture_settled"] = settled
    text = session_cost_mod.render_text(doc)
    if not settled:
        text += "\n(The gateway was still capturing, or did not answer: the newest call may be missing.)"
    return ToolResult(text, doc)


def _wait_for_tool_use(ctx: Context, conn: sqlite3.Connection, tool_use: str) -> str | None:
    deadline = time.monotonic() + TOOL_USE_WAIT
    while True:
        # Each SELECT outside a transaction reads the newest commit: no reconnect needed.
        sid = session_cost_mod.session_of_tool_use(conn, tool_use, ctx.now())
        if sid is not None or time.monotonic() >= deadline or not ctx.gateway_up():
            return sid
        time.sleep(0.1)


def run_insights(ctx: Context, args: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> ToolResult:
    _unknown(args, {"window", "format"})
    window = _string(args, "window", "month")
    fmt = _string(args, "format", "markdown", FORMATS)
    now = ctx.now()
    try:
        win = stats.window(window, None, now=now)
    except stats.StatsError as exc:
        raise ToolError(str(exc)) from exc
    conn = ctx.connect()
    try:
        found = insights.insights(conn, win, now)
    finally:
        conn.close()
    if fmt == "json":
        doc = insights.to_json(found)
        return ToolResult(json.dumps(doc, indent=1), doc)
    return ToolResult(insights.render_markdown(found))


def run_explain_call(ctx: Context, args: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> ToolResult:
    _unknown(args, {"call_id", "format"})
    call_id = _string(args, "call_id")
    fmt = _string(args, "format", "text", ("text", "json"))
    conn = ctx.connect()
    try:
        try:
            spool = Spool(conn)  # on a read-only connection: a spool needing migration fails here
        except sqlite3.Error as exc:
            raise ToolError(f"cannot read the spool at {ctx.spool_path}: {exc} "
                            "(a newer gateway upgrades it when it starts: `opik-cipx restart`)") from exc
        try:
            ids = explain.resolve_ids(spool, [call_id] if call_id else [], None if call_id else 1)
            ((ex, attr, pruned_at),) = list(explain.explain_each(spool, ctx.prices, ids))
        except explain.ExplainError as exc:
            raise ToolError(str(exc)) from exc
    finally:
        conn.close()
    if fmt == "json":
        doc = explain.to_json(ex, attr)
        doc.pop("regions", None)  # byte offsets into the raw body: bulky, and of no use to the model
        if pruned_at is not None:
            doc["body_pruned_at"] = pruned_at
        return ToolResult(json.dumps(doc, indent=1), doc)
    text = explain.render_text(ex, attr)
    return ToolResult(text if pruned_at is None else explain.pruned_note(pruned_at).strip() + "\n" + text)


def make_tools(ctx: Context) -> list[Tool]:
    return [
        Tool("session_cost",
             "What this Claude Code session has cost so far, exactly, from the calls the opik-cipx gateway "
             "captured (subagents and side calls included): cost, tokens, cache-hit rate, and the cost by "
             "category (tools, MCP servers, memory files, conversation, output, ...).",
             SESSION_COST_SCHEMA, lambda a, m: run_session_cost(ctx, a, m)),
        Tool("insights",
             "The opik-cipx insights report over a window (default: the last 30 days): spend by model, "
             "project and day, where the tokens went, and priced recommendations with the call ids they "
             "come from. Savings are the attributed cost of the bytes each change would remove.",
             INSIGHTS_SCHEMA, lambda a, m: run_insights(ctx, a, m)),
        Tool("explain_call",
             "Where one stored call's bytes, tokens and cost went, by category and item (what "
             "`opik-cipx explain` prints). Use the call ids from session_cost or insights.",
             EXPLAIN_SCHEMA, lambda a, m: run_explain_call(ctx, a, m)),
    ]

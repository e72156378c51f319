"""Per-call attribution totals in the spool (tables from migration m006).

Only totals are stored — per category and per item, request and response
side — because those are what stats, status and the session view aggregate.
Regions are recomputed from the stored body on demand (``analysis.analyze``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..attribute import Attribution, ItemTotal
from ..attribute.analysis import SessionCall, analyze
from ..attribute.responses import stored_chain
from ..model import Exchange
from ..pricing import PriceTable
from .migrations import transaction


def total_dict(t: ItemTotal) -> dict[str, Any]:
    return {"category": t.category, "item": t.item, "bytes": t.bytes, "tokens": t.tokens,
            "cost_usd": t.cost_usd, "detail": t.detail}


def summary(attr: Attribution, commands: tuple[str, ...] = ()) -> dict[str, Any]:
    """What is stored per call: the totals, and the command names a re-analysis must reuse.

    A user prompt's text is left out (its length stays): every call of a session
    carries all of its earlier prompts, so storing their text with each call grew a
    session's rows with the square of its length. The text is in the stored body;
    a re-analysis (``reanalyze``) finds it there.
    """
    out = {"commands": list(commands), **totals(attr)}
    for side in ("items", "output_items"):
        for item in out[side]:
            detail = item["detail"]
            if isinstance(detail, dict) and "text" in detail:
                item["detail"] = {k: v for k, v in detail.items() if k != "text"}
    return out


def totals(attr: Attribution) -> dict[str, Any]:
    """JSON-safe: everything of an Attribution except its regions."""
    return {
        "call_kind": attr.call_kind,
        "agent_id": attr.agent_id,
        "body_bytes": attr.body_bytes,
        "unattributed_bytes": attr.unattributed_bytes,
        "messages_bytes": messages_bytes(attr),
        "categories": {name: total_dict(t) for name, t in attr.categories.items()},
        "items": [total_dict(t) for t in attr.items],
        "output_items": [total_dict(t) for t in attr.output_items],
        "cache_split": attr.cache_split,
        "parse_error": attr.parse_error,
    }


def messages_bytes(attr: Attribution) -> int:
    span = attr.spans.get("messages")
    return span[1] - span[0] if span else 0


def save(conn: sqlite3.Connection, exchange_id: str, attr: Attribution, commands: tuple[str, ...] = ()) -> None:
    """Replace the stored attribution of one call (idempotent on re-capture)."""
    rows = [(exchange_id, "request", t.category, t.item, t.bytes, t.tokens, t.cost_usd) for t in attr.items]
    rows += [(exchange_id, "response", t.category, t.item, t.bytes, t.tokens, t.cost_usd) for t in attr.output_items]
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO attribution (exchange_id, call_kind, agent_id, body_bytes,"
            " unattributed_bytes, messages_bytes, summary) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (exchange_id, attr.call_kind, attr.agent_id, attr.body_bytes, attr.unattributed_bytes,
             messages_bytes(attr), json.dumps(summary(attr, commands), separators=(",", ":"))),
        )
        conn.execute("DELETE FROM attribution_items WHERE exchange_id = ?", (exchange_id,))
        # Items can repeat a (category, item) key across sides only; within a side they are unique.
        conn.executemany(
            "INSERT OR REPLACE INTO attribution_items (exchange_id, side, category, item, bytes, tokens, cost_usd)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def load(conn: sqlite3.Connection, exchange_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT summary FROM attribution WHERE exchange_id = ?", (exchange_id,)).fetchone()
    return json.loads(row[0]) if row else None


def stored_commands(conn: sqlite3.Connection, exchange_id: str) -> tuple[str, ...]:
    stored = load(conn, exchange_id)
    return tuple(stored.get("commands") or ()) if stored else ()


def reanalyze(conn: sqlite3.Connection, ex: Exchange, prices: PriceTable | None) -> Attribution:
    """A stored call analyzed again with what its capture knew, so every reader sees the same buckets."""
    stored = load(conn, ex.id) or {}
    calls, inherited = stored_chain(stored.get("cache_split") or {})  # a Codex turn's previous responses
    return analyze(ex, prices, commands=tuple(stored.get("commands") or ()), calls=calls, inherited=inherited)


def session_calls(conn: sqlite3.Connection, session_id: str) -> list[SessionCall]:
    """A session's attributed LLM calls in order, for compaction deltas and the session view."""
    rows = conn.execute(
        "SELECT e.id, e.started_at, a.call_kind, a.agent_id, a.messages_bytes,"
        " e.input_tokens + e.cache_creation_input_tokens + e.cache_read_input_tokens"
        " FROM exchanges e JOIN attribution a ON a.exchange_id = e.id"
        " WHERE e.session_id = ? ORDER BY e.started_at, e.id",
        (session_id,),
    ).fetchall()
    return [SessionCall(*row) for row in rows]

"""What the viewer's Insights page and context-growth chart read. Synchronous: run on the spool's thread.

The Insights page is ``opik-cipx insights --json`` for the chosen window, so the
page, the terminal report and the slash command can never disagree. The growth
chart reads per-call category byte totals (no bodies) in session order.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ..pricing import PriceTable
from ..report import insights, stats
from .queries import BadRequest

# The page offers these; anything else is refused rather than guessed at.
WINDOWS = ("today", "week", "month", "all")
MAX_GROWTH_CALLS = 2000


def insights_report(conn: sqlite3.Connection, prices: PriceTable, name: str,
                    now: float | None = None) -> dict[str, Any]:
    if name not in WINDOWS:
        raise BadRequest(f"unknown window {name!r}: use one of {', '.join(WINDOWS)}")
    now = time.time() if now is None else now
    win = stats.window(None if name == "all" else name, now=now)
    return insights.to_json(insights.insights(conn, win, now, prices))


def context_growth(conn: sqlite3.Connection, session_id: str, limit: int = MAX_GROWTH_CALLS) -> dict[str, Any] | None:
    """The request bytes of each call of the session, by category, oldest first; compactions marked.

    Main-agent calls only: subagents carry conversations of their own,
    and stacking them in one series would show growth that is not there. They are
    counted so the page can say how many it left out.
    """
    rows = conn.execute(
        "SELECT e.id, e.started_at, a.call_kind, e.agent_id,"
        " e.input_tokens + e.cache_creation_input_tokens + e.cache_read_input_tokens"
        " FROM exchanges e JOIN attribution a ON a.exchange_id = e.id"
        " WHERE e.session_id = ? ORDER BY e.started_at, e.id",
        (session_id,),
    ).fetchall()
    if not rows:
        return None
    main = [r for r in rows if r[2] in ("main", "compaction") and not r[3]]
    shown = main[:limit]
    index = {r[0]: i for i, r in enumerate(shown)}
    calls = [{"id": r[0], "started_at": r[1], "call_kind": r[2], "prompt_tokens": int(r[4]), "bytes": {}}
             for r in shown]
    categories: dict[str, int] = {}
    # One pass over the session's request-side items; each row lands in its call's slot.
    for exchange_id, category, size in conn.execute(
        "SELECT i.exchange_id, i.category, total(i.bytes) FROM attribution_items i"
        " JOIN exchanges e ON e.id = i.exchange_id WHERE e.session_id = ? AND i.side = 'request'"
        " GROUP BY i.exchange_id, i.category",
        (session_id,),
    ):
        slot = index.get(exchange_id)
        if slot is None:
            continue
        calls[slot]["bytes"][category] = int(size)
        categories[category] = categories.get(category, 0) + int(size)
    return {
        "session_id": session_id,
        "calls": calls,
        # Biggest first, so the stack's base is what dominates and the legend reads in order.
        "categories": sorted(categories, key=lambda c: -categories[c]),
        "compactions": [c["id"] for c in calls if c["call_kind"] == "compaction"],
        "left_out": {"subagent_or_side_calls": len(rows) - len(main), "beyond_limit": max(0, len(main) - limit)},
    }

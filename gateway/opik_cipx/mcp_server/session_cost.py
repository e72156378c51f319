"""What one session has cost so far, by category: the ``session_cost`` tool's answer.

Pure SQL over a read-only spool connection. The totals are the same aggregates as
``opik-cipx stats --by session`` (LLM calls only, unpriced calls counted apart, never as $0),
so what Claude reports from this tool and what the user reads in a terminal agree.
"""

from __future__ import annotations

import sqlite3
import zlib
from typing import Any

from ..report.stats import CLIENT_SQL
from ..wire.redact import CREDENTIAL_HEADER, OAUTH
from ..wire.response import decode_content

LLM_KINDS = "kind IN ('messages', 'responses')"


def session_cost(conn: sqlite3.Connection, session_id: str) -> dict[str, Any]:
    """The session's totals (billed usage, as ``stats``), the attributed cost and tokens of each
    category (request side and output), and its spend per model and per kind of call (main
    conversation, subagents, side calls, compaction)."""
    (calls, errors, inp, write, read, out, cost, unpriced, first, last, oauth) = conn.execute(
        "SELECT count(*), total(outcome != 'complete'), total(input_tokens), total(cache_creation_input_tokens),"
        " total(cache_read_input_tokens), total(output_tokens), total(cost_usd),"
        " total(usage IS NOT NULL AND cost_usd IS NULL), min(started_at), max(started_at),"
        f" total(json_extract(request_headers, '$.\"{CREDENTIAL_HEADER}\"') = ?)"
        f" FROM exchanges WHERE {LLM_KINDS} AND session_id = ?",
        (OAUTH, session_id),
    ).fetchone()
    prompt = int(inp + write + read)
    doc: dict[str, Any] = {
        "session_id": session_id,
        "calls": int(calls),
        "errors": int(errors),
        "cost_usd": float(cost),
        "unpriced_calls": int(unpriced),
        # A subscription (OAuth) login is not billed per token: its calls are priced at API list price.
        "at_list": bool(oauth),
        "input_tokens": int(inp),
        "cache_write_tokens": int(write),
        "cache_read_tokens": int(read),
        "output_tokens": int(out),
        "prompt_tokens": prompt,
        "cache_hit_rate": (read / prompt) if prompt else None,
        "first_at": first,
        "last_at": last,
        "last_call_id": None,
        "by_category": [],
        "by_model": [],
        "by_call_kind": [],
    }
    if not calls:
        return doc
    doc["last_call_id"] = conn.execute(
        f"SELECT id FROM exchanges WHERE {LLM_KINDS} AND session_id = ? ORDER BY started_at DESC, id DESC LIMIT 1",
        (session_id,),
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT i.category, i.side, total(i.bytes), total(i.tokens), total(i.cost_usd)"
        " FROM attribution_items i JOIN exchanges e ON e.id = i.exchange_id"
        f" WHERE e.{LLM_KINDS} AND e.session_id = ? GROUP BY i.category, i.side",
        (session_id,),
    ).fetchall()
    doc["by_category"] = sorted(
        ({"category": c, "side": side, "bytes": int(b), "tokens": int(t), "cost_usd": float(x),
          "share": (float(x) / doc["cost_usd"]) if doc["cost_usd"] else None} for c, side, b, t, x in rows),
        key=lambda g: (-g["cost_usd"], -g["tokens"], g["category"]),
    )
    doc["by_model"] = _groups(conn, session_id, "coalesce(model, '(unknown)')")
    doc["by_call_kind"] = [
        {"call_kind": k, "calls": int(n), "cost_usd": float(x)}
        for k, n, x in conn.execute(
            "SELECT coalesce(a.call_kind, '(unattributed)') AS k, count(*), total(e.cost_usd)"
            " FROM exchanges e LEFT JOIN attribution a ON a.exchange_id = e.id"
            f" WHERE e.{LLM_KINDS} AND e.session_id = ? GROUP BY k ORDER BY total(e.cost_usd) DESC, k",
            (session_id,),
        )
    ]
    doc["client"] = conn.execute(
        f"SELECT {CLIENT_SQL} FROM exchanges WHERE {LLM_KINDS} AND session_id = ? LIMIT 1", (session_id,)
    ).fetchone()[0]
    return doc


def _groups(conn: sqlite3.Connection, session_id: str, key: str) -> list[dict[str, Any]]:
    return [
        {"key": k, "calls": int(n), "cost_usd": float(x), "unpriced_calls": int(u)}
        for k, n, x, u in conn.execute(
            f"SELECT {key} AS k, count(*), total(cost_usd), total(usage IS NOT NULL AND cost_usd IS NULL)"
            f" FROM exchanges WHERE {LLM_KINDS} AND session_id = ? GROUP BY k ORDER BY total(cost_usd) DESC, k",
            (session_id,),
        )
    ]


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def render_text(doc: dict[str, Any]) -> str:
    """A few lines for the model to read back to the user (the JSON rides along as structured content)."""
    sid = doc["session_id"]
    if not doc["calls"]:
        return (f"No call of session {sid} has been captured yet. Either the gateway is not in this "
                "session's path (ANTHROPIC_BASE_URL), or its calls are still being captured; "
                "`opik-cipx status` says which.")
    cost = _usd(doc["cost_usd"]) + (" at list price (subscription login)" if doc["at_list"] else "")
    if doc["unpriced_calls"]:
        cost += f" (+ {doc['unpriced_calls']} call(s) with no known price)"
    rate = doc["cache_hit_rate"]
    lines = [
        f"Session {sid}: {doc['calls']} LLM call(s), {cost}.",
        f"Tokens: {doc['input_tokens']:,} uncached input, {doc['cache_write_tokens']:,} cache write,"
        f" {doc['cache_read_tokens']:,} cache read, {doc['output_tokens']:,} output"
        + (f"; cache-hit rate {100 * rate:.1f}%." if rate is not None else "."),
        "By category (attributed cost, tokens):",
    ]
    for g in doc["by_category"]:
        share = f" {100 * g['share']:.1f}%" if g["share"] is not None else ""
        lines.append(f"  {g['category']:<16} {_usd(g['cost_usd']):>10}{share:>7}  {g['tokens']:,} tokens")
    if len(doc["by_model"]) > 1 or len(doc["by_call_kind"]) > 1:
        lines.append("By model: " + ", ".join(f"{g['key']} {_usd(g['cost_usd'])}" for g in doc["by_model"]))
        lines.append("By kind of call: " + ", ".join(f"{g['call_kind']} {g['calls']} call(s) {_usd(g['cost_usd'])}"
                                                     for g in doc["by_call_kind"]))
    lines.append(f"Latest call: {doc['last_call_id']} (`opik-cipx explain {doc['last_call_id']}`).")
    return "\n".join(lines)


# A tool call is answered within moments of the response that asked for it: look no further back.
LOCATE_WINDOW_S = 3600.0
LOCATE_LIMIT = 200


def session_of_tool_use(conn: sqlite3.Connection, tool_use_id: str, now: float) -> str | None:
    """The session whose stored answer asked for ``tool_use_id``: exact where the environment is
    not. Claude Code starts its MCP servers before ``--continue`` / ``--resume`` switch it to the
    resumed session, so ``CLAUDE_CODE_SESSION_ID`` then names a session that never sends a call;
    the ``claudecode/toolUseId`` of the tool call names the response it came from."""
    needle = tool_use_id.encode()
    rows = conn.execute(
        "SELECT e.session_id, e.response_encoding, b.data FROM exchanges e JOIN blobs b ON b.hash = e.response_hash"
        f" WHERE e.{LLM_KINDS} AND e.started_at >= ? AND e.session_id IS NOT NULL"
        " ORDER BY e.started_at DESC LIMIT ?",
        (now - LOCATE_WINDOW_S, LOCATE_LIMIT),
    )
    for session_id, encoding, data in rows:
        try:
            body = zlib.decompress(data)
        except zlib.error:
            continue
        if encoding:
            body = b"".join(decode_content(encoding, [body])[0])
        if needle in body:
            return str(session_id)
    return None

"""What the viewer's JSON API reads from the spool. Synchronous: run on the spool's thread.

Listings page by keyset on ``(started_at, id)``, the order the spool's indexes
end in, so the 2,000th page costs the same index seek as the first.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..attribute.analysis import analyze, compaction_deltas, response_content
from ..pricing import PriceTable
from ..report import stats
from ..report.explain import explain_each, to_json
from ..store import attribution as attribution_store
from ..store.spool import BodyPruned, Spool

MAX_PAGE = 500
CALL_KINDS = ("main", "subagent", "compaction", "title", "side", "warmup", "count_tokens", "other")
MAX_SESSION_CALLS = 5000

_LIST_COLUMNS = (
    "e.id", "e.started_at", "e.session_id", "e.agent_id", "e.model", "e.kind", "e.outcome", "e.status",
    "e.input_tokens", "e.cache_read_input_tokens", "e.cache_creation_input_tokens", "e.output_tokens",
    "e.cost_usd", "e.duration_ms", "e.ttft_ms", "e.ttfb_ms", "e.request_bytes",
    "a.call_kind", "a.body_bytes", "a.unattributed_bytes",
)
_LIST_NAMES = tuple(c.split(".", 1)[1] for c in _LIST_COLUMNS)


class BadRequest(ValueError):
    """A query parameter the API cannot use."""


def encode_cursor(started_at: float, exchange_id: str) -> str:
    # repr() round-trips a float exactly; the client hands the string back untouched.
    return f"{started_at!r}|{exchange_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    at, sep, exchange_id = cursor.partition("|")
    try:
        if not sep or not exchange_id:
            raise ValueError
        return float(at), exchange_id
    except ValueError:
        raise BadRequest(f"bad cursor {cursor!r}") from None


def list_sql(*, session_id: str | None = None, model: str | None = None, kind: str | None = None,
             before: tuple[float, str] | None = None) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if session_id:
        where.append("e.session_id = ?")
        params.append(session_id)
    if model:
        where.append("e.model = ?")
        params.append(model)
    if kind:
        if kind not in CALL_KINDS:
            raise BadRequest(f"unknown call kind {kind!r}")
        # Attributed LLM calls have a call kind; the rest (count_tokens, other) only the wire kind.
        where.append("coalesce(a.call_kind, e.kind) = ?")
        params.append(kind)
    if before is not None:
        where.append("(e.started_at, e.id) < (?, ?)")
        params.extend(before)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    sql = (f"SELECT {', '.join(_LIST_COLUMNS)} FROM exchanges e"
           f" LEFT JOIN attribution a ON a.exchange_id = e.id{clause}"
           " ORDER BY e.started_at DESC, e.id DESC LIMIT ?")
    return sql, params


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(_LIST_NAMES, values, strict=True))
    body, unattributed = row.pop("body_bytes"), row.pop("unattributed_bytes")
    row["unattributed_pct"] = (100.0 * unattributed / body) if body else None
    row["call_kind"] = row["call_kind"] or row["kind"]
    row["client"] = "codex" if row["kind"] == "responses" else "claude-code"  # as model.client_of
    return row


def list_calls(conn: sqlite3.Connection, *, limit: int = 100, cursor: str | None = None,
               session_id: str | None = None, model: str | None = None, kind: str | None = None) -> dict[str, Any]:
    limit = max(1, min(MAX_PAGE, limit))
    before = decode_cursor(cursor) if cursor else None
    sql, params = list_sql(session_id=session_id, model=model, kind=kind, before=before)
    rows = [_row(r) for r in conn.execute(sql, [*params, limit])]
    nxt = encode_cursor(rows[-1]["started_at"], rows[-1]["id"]) if len(rows) == limit else None
    return {"calls": rows, "next": nxt}


def filters(conn: sqlite3.Connection) -> dict[str, Any]:
    models = [r[0] for r in conn.execute("SELECT DISTINCT model FROM exchanges WHERE model IS NOT NULL ORDER BY model")]
    return {"models": models, "kinds": list(CALL_KINDS)}


def sessions(conn: sqlite3.Connection, limit: int = 200) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT session_id, count(*), min(started_at), max(started_at), total(cost_usd),"
        " total(input_tokens + cache_creation_input_tokens + cache_read_input_tokens + output_tokens)"
        " FROM exchanges WHERE session_id IS NOT NULL AND kind = 'messages'"
        " GROUP BY session_id ORDER BY max(started_at) DESC LIMIT ?",
        (limit,),
    )
    return [{"session_id": s, "calls": n, "first_at": a, "last_at": b, "cost_usd": c, "tokens": int(t)}
            for s, n, a, b, c, t in rows]


def call_detail(spool: Spool, exchange_id: str, prices: PriceTable) -> bytes | None:
    """The detail page's JSON, serialized here so the event loop never touches a 1 MB body."""
    try:
        ex = spool.get(exchange_id)
    except BodyPruned:  # retention kept its totals only: shown as such, with when
        ex, attr, pruned = next(explain_each(spool, prices, [exchange_id]))
        out = {**to_json(ex, attr), "body_pruned_at": pruned, "response": [], "path": ex.path, "kind": ex.kind.value}
        return json.dumps(out, separators=(",", ":")).encode("utf-8")
    if ex is None:
        return None
    attr = attribution_store.reanalyze(spool.conn, ex, prices)
    out = to_json(ex, attr)
    out.update(
        path=ex.path, method=ex.method, status=ex.status, stop_reason=ex.stop_reason, error=ex.error,
        kind=ex.kind.value, ttfb_ms=ex.ttfb_ms, ttft_ms=ex.ttft_ms, duration_ms=ex.duration_ms,
        request_bytes=ex.request_bytes, response_bytes=ex.response_bytes, streamed=ex.streamed,
        response=response_content(ex) if ex.is_llm_call else [],
        project=project(spool.conn, ex.session_id, ex.id),
    )
    return json.dumps(out, separators=(",", ":")).encode("utf-8")


def request_body(spool: Spool, exchange_id: str) -> bytes | None:
    try:
        ex = spool.get(exchange_id)
    except BodyPruned:
        return b""  # pruned by retention: no bytes kept (the detail says so)
    return None if ex is None else ex.request_body


def reattribute(spool: Spool, exchange_id: str, prices: PriceTable) -> dict[str, Any] | None:
    """Recompute and store a call's attribution with today's rules and prices."""
    try:
        ex = spool.get(exchange_id)
    except BodyPruned:
        return None
    if ex is None or not ex.is_llm_call or not ex.request_body:
        return None
    commands = attribution_store.stored_commands(spool.conn, ex.id)
    attr = analyze(ex, prices, commands=commands)
    attribution_store.save(spool.conn, ex.id, attr, commands)
    return {"id": ex.id, "unattributed_bytes": attr.unattributed_bytes, "body_bytes": attr.body_bytes}


def project(conn: sqlite3.Connection, session_id: str | None, exchange_id: str) -> str:
    """The session's cwd as its SessionStart hook reported it, else as the request states it."""
    if session_id:
        try:
            row = conn.execute("SELECT cwd FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        except sqlite3.OperationalError:  # a spool from before session registration existed
            row = None
        if row and row[0]:
            return str(row[0])
    return stats.project_of(conn, exchange_id)


def session_detail(conn: sqlite3.Connection, session_id: str) -> dict[str, Any] | None:
    sql, params = list_sql(session_id=session_id)
    sql = sql.replace("ORDER BY e.started_at DESC, e.id DESC", "ORDER BY e.started_at, e.id")
    calls = [_row(r) for r in conn.execute(sql, [*params, MAX_SESSION_CALLS])]
    if not calls:
        return None
    cumulative = 0.0
    for call in calls:
        cumulative += call["cost_usd"] or 0.0
        call["cumulative_cost_usd"] = cumulative
    categories = [
        {"category": c, "calls": n, "bytes": int(b), "tokens": int(t), "cost_usd": cost}
        for c, n, b, t, cost in conn.execute(
            "SELECT i.category, count(DISTINCT i.exchange_id), total(i.bytes), total(i.tokens), total(i.cost_usd)"
            " FROM attribution_items i JOIN exchanges e ON e.id = i.exchange_id"
            " WHERE e.session_id = ? GROUP BY i.category ORDER BY total(i.tokens) DESC",
            (session_id,),
        )
    ]
    servers: dict[str, dict[str, Any]] = {}
    for item, exchange_id, size, tokens, cost in conn.execute(
        "SELECT i.item, i.exchange_id, i.bytes, i.tokens, i.cost_usd FROM attribution_items i"
        " JOIN exchanges e ON e.id = i.exchange_id WHERE e.session_id = ? AND i.category = 'mcp'",
        (session_id,),
    ):
        name = stats.mcp_server(item)
        s = servers.setdefault(name, {"server": name, "bytes": 0, "tokens": 0, "cost_usd": 0.0, "ids": set(),
                                      "items": {}})
        s["bytes"] += size
        s["tokens"] += tokens
        s["cost_usd"] += cost or 0.0
        s["ids"].add(exchange_id)
        s["items"][item] = s["items"].get(item, 0) + tokens
    mcp = []
    for s in sorted(servers.values(), key=lambda v: -v["tokens"]):
        ids = s.pop("ids")
        s["calls"] = len(ids)
        s["items"] = sorted(({"item": k, "tokens": v} for k, v in s["items"].items()), key=lambda v: -v["tokens"])
        mcp.append(s)
    deltas = compaction_deltas(attribution_store.session_calls(conn, session_id))
    compactions = [
        {"exchange_id": d.exchange_id, "next_exchange_id": d.next_exchange_id,
         "messages_bytes_before": d.messages_bytes_before, "messages_bytes_after": d.messages_bytes_after,
         "prompt_tokens_before": d.prompt_tokens_before, "prompt_tokens_after": d.prompt_tokens_after,
         "bytes_saved": d.bytes_saved}
        for d in deltas.values()
    ]
    return {
        "session_id": session_id,
        "project": project(conn, session_id, calls[0]["id"]),
        "calls": calls,
        "truncated": len(calls) == MAX_SESSION_CALLS,
        "cost_usd": cumulative,
        "categories": categories,
        "mcp": mcp,
        "compactions": compactions,
    }

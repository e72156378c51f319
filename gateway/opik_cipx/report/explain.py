"""``opik-cipx explain``: a stored call's attribution as text or JSON.

What a user pastes into a bug report when a byte lands in the wrong bucket,
so the JSON form carries the regions over the stored raw body.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from ..attribute import Attribution, ItemTotal
from ..model import CallKind, Cost, Exchange, Outcome, Usage
from ..pricing import PriceTable
from ..store.attribution import load, reanalyze, totals
from ..store.spool import BodyPruned, Spool


class ExplainError(Exception):
    """A request the user can fix: unknown or ambiguous id, empty spool."""


def resolve_ids(spool: Spool, ids: list[str], last: int | None) -> list[str]:
    """Full exchange ids for the given id prefixes, or the newest ``last`` LLM calls."""
    conn = spool.conn
    out: list[str] = []
    for prefix in ids:
        rows = conn.execute(
            "SELECT id FROM exchanges WHERE id >= ? AND id < ? ORDER BY id LIMIT 3",
            (prefix, prefix + "\uffff"),
        ).fetchall()
        if not rows:
            raise ExplainError(f"no stored call with id {prefix!r} (see `opik-cipx explain --last 5`)")
        if len(rows) > 1:
            raise ExplainError(f"id prefix {prefix!r} is ambiguous: {', '.join(r[0] for r in rows)}…")
        out.append(rows[0][0])
    if last:
        out += spool.last_ids(last, llm_only=True)  # ids only: calls are loaded one at a time
    if not out:
        raise ExplainError("nothing to explain: no LLM calls captured yet")
    return out


def _fmt_cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _row(name: str, t: ItemTotal, body: int, indent: str = "") -> str:
    share = 100.0 * t.bytes / body if body else 0.0
    width = 44 - len(indent)
    return f"{indent}{name[:width]:<{width}} {t.bytes:>10,} {share:6.1f}% {t.tokens:>9,} {_fmt_cost(t.cost_usd):>11}"


def render_text(ex: Exchange, attr: Attribution) -> str:
    when = datetime.fromtimestamp(ex.started_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    u = ex.usage
    lines = [
        f"call {ex.id}  {attr.call_kind}{'  agent ' + attr.agent_id if attr.agent_id else ''}",
        f"  {when}  model {ex.model or '?'}  session {ex.session_id or '-'}  outcome {ex.outcome.value}",
    ]
    if ex.error:
        status = f"HTTP {ex.status}" if ex.status is not None else "no answer from the upstream"
        lines.append(f"  error: {ex.error} ({status})")
    if u is not None:
        lines.append(
            f"  prompt {u.prompt_tokens:,} tokens (input {u.input_tokens:,}, cache write "
            f"{u.cache_creation_input_tokens:,}, cache read {u.cache_read_input_tokens:,})  "
            f"output {u.output_tokens:,}  cost {_fmt_cost(ex.cost.total_usd if ex.cost else None)}"
        )
    split = attr.cache_split.get("bytes")
    if split:
        lines.append(
            f"  cache split (bytes): read {split['cache_read']:,}, write {split['cache_write']:,}, "
            f"uncached {split['input']:,}"
        )
    lines.append("")
    lines.append(f"{'request category / item':<44} {'bytes':>10} {'share':>7} {'tokens':>9} {'cost':>11}")
    by_category: dict[str, list[ItemTotal]] = {}
    for item in attr.items:
        by_category.setdefault(item.category, []).append(item)
    ordered = sorted(attr.categories.items(), key=lambda kv: -kv[1].bytes)
    for name, total in ordered:
        if total.bytes == 0 and total.tokens == 0:
            continue
        lines.append(_row(name, total, attr.body_bytes))
        items = sorted(by_category.get(name, []), key=lambda t: -t.bytes)
        for item in items[:12]:
            if item.item:
                lines.append(_row(item.item, item, attr.body_bytes, "  "))
        if len(items) > 12:
            lines.append(f"  … {len(items) - 12} more items")
    if attr.output_items:
        lines.append("")
        lines.append(f"{'response item':<44} {'bytes':>10} {'':>7} {'tokens':>9} {'cost':>11}")
        for item in attr.output_items:
            cost = _fmt_cost(item.cost_usd)
            lines.append(f"{item.item[:44]:<44} {item.bytes:>10,} {'':>7} {item.tokens:>9,} {cost:>11}")
    share = 100.0 * attr.unattributed_bytes / attr.body_bytes if attr.body_bytes else 0.0
    lines.append("")
    lines.append(f"unattributed: {attr.unattributed_bytes:,} of {attr.body_bytes:,} bytes ({share:.2f}%)")
    if attr.parse_error:
        lines.append(f"body not fully readable: {attr.parse_error}")
    return "\n".join(lines)


def to_json(ex: Exchange, attr: Attribution) -> dict[str, Any]:
    u = ex.usage
    return {
        "id": ex.id,
        "started_at": ex.started_at,
        "session_id": ex.session_id,
        "model": ex.model,
        "outcome": ex.outcome.value,
        "status": ex.status,
        "error": ex.error,
        "usage": None if u is None else {
            "input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_creation_input_tokens,
            "cache_read_input_tokens": u.cache_read_input_tokens, "output_tokens": u.output_tokens,
        },
        "cost_usd": ex.cost.total_usd if ex.cost else None,
        **totals(attr),
        "regions": [{"start": r.start, "end": r.end, "category": r.category, "item": r.item} for r in attr.regions],
    }


def explain(spool: Spool, prices: PriceTable, ids: list[str], last: int | None) -> list[tuple[Exchange, Attribution]]:
    return [(ex, attr) for ex, attr, _ in explain_each(spool, prices, resolve_ids(spool, ids, last))]


Explained = tuple[Exchange, Attribution, float | None]  # the last: when retention pruned its body


def explain_each(spool: Spool, prices: PriceTable, ids: list[str]) -> Iterator[Explained]:
    """Each call explained in turn, loaded only when reached: memory holds one call, whatever N.

    A call whose bodies retention pruned is explained from what was kept of it (its totals as
    captured, no regions) and the moment it was pruned.
    """
    for exchange_id in ids:
        try:
            ex = spool.get(exchange_id)
        except BodyPruned as gone:
            yield (*_as_captured(spool.conn, exchange_id), gone.pruned_at)
            continue
        if ex is None:  # deleted between resolve and get
            raise ExplainError(f"call {exchange_id} disappeared from the spool")
        yield ex, reanalyze(spool.conn, ex, prices), None


def _item(d: dict[str, Any]) -> ItemTotal:
    return ItemTotal(d["category"], d["item"], d.get("bytes", 0), d.get("tokens", 0), d.get("cost_usd"),
                     d.get("detail") or {})


def _as_captured(conn: sqlite3.Connection, exchange_id: str) -> tuple[Exchange, Attribution]:
    """A pruned call as the spool keeps it: its row and its stored attribution totals."""
    row = conn.execute(
        "SELECT started_at, method, path, kind, status, outcome, session_id, agent_id, model, stop_reason,"
        " error, usage, cost, request_bytes, response_bytes FROM exchanges WHERE id = ?", (exchange_id,)
    ).fetchone()
    usage, cost = (json.loads(v) if v else None for v in row[11:13])
    ex = Exchange(
        id=exchange_id, started_at=row[0], method=row[1], path=row[2], kind=CallKind(row[3]), status=row[4],
        outcome=Outcome(row[5]), session_id=row[6], agent_id=row[7], model=row[8], stop_reason=row[9],
        error=row[10], usage=None if usage is None else Usage(**{k: v for k, v in usage.items()
                                                                  if k in Usage.__dataclass_fields__}),
        cost=None if cost is None else Cost(**{k: v for k, v in cost.items() if k in Cost.__dataclass_fields__}),
        request_bytes=row[13], response_bytes=row[14],
    )
    stored = load(conn, exchange_id) or {}
    attr = Attribution(
        regions=[], body_bytes=stored.get("body_bytes", row[13]),
        unattributed_bytes=stored.get("unattributed_bytes", 0),
        call_kind=stored.get("call_kind", "?"), agent_id=stored.get("agent_id"),
        items=[_item(d) for d in stored.get("items", [])],
        categories={name: _item(d) for name, d in (stored.get("categories") or {}).items()},
        output_items=[_item(d) for d in stored.get("output_items", [])],
        cache_split=stored.get("cache_split") or {}, parse_error=stored.get("parse_error"),
    )
    return ex, attr


def pruned_note(when: float) -> str:
    day = datetime.fromtimestamp(when, tz=UTC).strftime("%Y-%m-%d")
    return (f"  body pruned by retention on {day} (CIPX_RETENTION_DAYS / CIPX_SPOOL_MAX_MB): the totals below "
            "are as captured; the raw bytes and their regions are no longer kept")


def write(spool: Spool, prices: PriceTable, ids: list[str], out: TextIO, *, as_json: bool) -> None:
    """Explain ``ids`` onto ``out`` as each is done: ``--last 5000 --json`` streams its output
    instead of building it. JSON is always an array, however many calls: scripts need not
    check the shape."""
    if as_json:
        out.write("[")
    for i, (ex, attr, when) in enumerate(explain_each(spool, prices, ids)):
        if as_json:
            doc = to_json(ex, attr)
            if when is not None:
                doc["body_pruned_at"] = when
            out.write(("\n" if i == 0 else ",\n") + json.dumps(doc, indent=2))
        else:
            text = render_text(ex, attr)
            if when is not None:
                head, _, rest = text.partition("\n")
                second, _, rest = rest.partition("\n")
                text = "\n".join([head, second, pruned_note(when), rest])
            out.write(("\n\n" if i else "") + text)
    if as_json:
        out.write("\n]" if ids else "]")
    out.write("\n")


def open_spool(path: Any) -> Spool:
    from ..store.spool import connect

    if not path.exists():
        raise ExplainError(f"no spool at {path}: the gateway has not captured anything yet")
    try:
        return Spool(connect(path))
    except sqlite3.Error as exc:
        raise ExplainError(f"cannot open the spool at {path}: {exc}") from exc

"""Cost insights: spend, where the tokens went, and priced recommendations, from the spool.

Pure functions over a (read-only) connection: every number comes from SQL
aggregates over ``exchanges`` and ``attribution_items``, so memory stays bounded
however many calls the window holds and no body is loaded. Totals are the
``stats`` queries themselves, so the two can never disagree for one window.

A recommendation's saving is the attributed cost of the bytes it would remove,
summed over the calls that carried them (``report/recommend.py``); for the
cache, long-context and compaction kinds it is the same usage priced the other
way, call by call (``report/recommend_context.py``). README "Insights" lists them.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from ..pricing import PriceTable
from ..wire.redact import CREDENTIAL_HEADER, OAUTH
from . import stats
from .recommend import Recommendation, presence_recommendations
from .recommend_context import context_recommendations

TOP_ITEMS = 3


@dataclass(slots=True)
class Insights:
    window: stats.Window
    totals: stats.Totals
    previous: stats.Totals | None  # the window of the same length just before; None for all time
    at_list_usd: float  # the part of totals.cost_usd from subscription (OAuth) calls: list price
    by_model: list[stats.Group]
    by_project: list[stats.Group]
    by_day: list[stats.Group]
    by_category: list[stats.Group]
    top_items: dict[str, list[stats.Group]]
    recommendations: list[Recommendation]


def previous_window(win: stats.Window, now: float) -> stats.Window | None:
    if win.since is None:
        return None
    until = win.since
    return stats.Window("previous window", until - ((win.until or now) - until), until, win.sessions)


def at_list_cost(conn: sqlite3.Connection, win: stats.Window) -> float:
    """Cost of the calls made with a subscription login: priced at API list price, not billed per token."""
    where, params = stats._where(win)
    (cost,) = conn.execute(
        f"SELECT total(cost_usd) FROM exchanges WHERE {where}"
        f" AND json_extract(request_headers, '$.\"{CREDENTIAL_HEADER}\"') = ?",
        [*params, OAUTH],
    ).fetchone()
    return float(cost)


def top_items(conn: sqlite3.Connection, win: stats.Window, limit: int = TOP_ITEMS) -> dict[str, list[stats.Group]]:
    """The costliest items inside each request-side category (which server, tool, memory file)."""
    where, params = stats._where(win, "e")
    rows = conn.execute(
        "SELECT i.category, i.item, count(*), total(i.bytes), total(i.tokens), total(i.cost_usd)"
        " FROM attribution_items i JOIN exchanges e ON e.id = i.exchange_id"
        f" WHERE {where} AND i.side = 'request' GROUP BY i.category, i.item",
        params,
    )
    out: dict[str, list[stats.Group]] = {}
    for category, item, calls, size, tokens, cost in rows:
        out.setdefault(category, []).append(stats.Group(item, int(calls), tokens=int(tokens), bytes=int(size),
                                                        cost_usd=float(cost)))
    return {c: sorted(g, key=lambda g: (-g.cost_usd, -g.tokens, g.key))[:limit] for c, g in out.items()}


def recommendations(conn: sqlite3.Connection, win: stats.Window, prices: PriceTable) -> list[Recommendation]:
    found = presence_recommendations(conn, win) + context_recommendations(conn, win, prices)
    return sorted(found, key=lambda r: (-r.saving_usd, -r.tokens, r.kind, r.target))


def project_sessions(conn: sqlite3.Connection, win: stats.Window, path: str) -> tuple[str, ...]:
    """The window's sessions whose project directory is ``path`` or below it."""
    root = path.rstrip("/") or "/"

    def inside(project: str) -> bool:
        return root == "/" or project == root or project.startswith(root + "/")

    return tuple(sorted(s for s, project in stats.session_projects(conn, win).items() if s and inside(project)))


def insights(conn: sqlite3.Connection, win: stats.Window, now: float, prices: PriceTable | None = None) -> Insights:
    prev = previous_window(win, now)
    return Insights(
        window=win,
        totals=stats.totals(conn, win),
        previous=stats.totals(conn, prev) if prev else None,
        at_list_usd=at_list_cost(conn, win),
        by_model=stats.groups(conn, win, "model"),
        by_project=stats.groups(conn, win, "project"),
        by_day=stats.groups(conn, win, "day"),
        by_category=stats.groups(conn, win, "category"),
        top_items=top_items(conn, win),
        recommendations=recommendations(conn, win, prices or PriceTable.builtin()),
    )


# --- output ------------------------------------------------------------------------------------

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    top = max(values, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] for v in values)


def change(now: float, before: float | None) -> str:
    if before is None:
        return "-"
    if before == 0:
        return "new" if now else "0%"
    return f"{100 * (now - before) / before:+.0f}%"


def _usd(value: float) -> str:
    if value < 0:
        return "-" + _usd(-value)
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _money(ins: Insights) -> str:
    """Total spend; the subscription part is labelled: it is list price, not money billed."""
    t = ins.totals
    if not ins.at_list_usd:
        return _usd(t.cost_usd)
    billed = t.cost_usd - ins.at_list_usd
    return f"{_usd(billed)} API-billed + {_usd(ins.at_list_usd)} at list (subscription)"


SAVING_NOTE = ("savings = attributed cost of the bytes each would remove, summed over the calls that carried them;"
               " for cold_cache and long_context, the same usage priced with the setting")


def render_text(ins: Insights, colour: bool = False) -> str:
    bold, dim, off = ("\x1b[1m", "\x1b[2m", "\x1b[0m") if colour else ("", "", "")
    t = ins.totals
    prev = ins.previous
    lines = [f"{bold}opik-cipx insights — {ins.window.label}{off}", ""]
    lines.append(f"  spend      {_money(ins)}   ({t.calls:,} calls; vs previous window: "
                 f"{change(t.cost_usd, prev.cost_usd if prev else None)})")
    if ins.by_day:
        lines.append(f"  per day    {sparkline([g.cost_usd for g in ins.by_day])}  "
                     f"{dim}{ins.by_day[0].key} → {ins.by_day[-1].key}{off}")
    for title, rows in (("model", ins.by_model), ("project", ins.by_project)):
        lines += ["", f"{bold}  by {title}{off}"]
        width = min(48, max([8] + [len(g.key) for g in rows]))
        for g in rows[:8]:
            lines.append(f"    {stats._fit(g.key, width):<{width}} {g.calls:>7,} calls {_usd(g.cost_usd):>11}")
    lines += ["", f"{bold}  where the tokens went{off}",
              f"    input uncached {t.input_tokens:>12,}   cache write {t.cache_write_tokens:>12,}   "
              f"cache read {t.cache_read_tokens:>12,}   output {t.output_tokens:>10,}"]
    for g in ins.by_category[:8]:
        tops = ", ".join(f"{stats._fit(i.key, 40)} {_usd(i.cost_usd)}" for i in ins.top_items.get(g.key, []))
        lines.append(f"    {g.key:<15} {g.tokens:>12,} tok {_usd(g.cost_usd):>11}  {dim}{tops}{off}")
    lines += ["", f"{bold}  recommendations{off}  {dim}({SAVING_NOTE}){off}"]
    for r in ins.recommendations[:15]:
        lines.append(f"    {r.kind:<20} {stats._fit(r.target, 36):<36} in {r.calls_present:>5,} calls, used {r.uses:>3}"
                     f"  save {_usd(r.saving_usd):>10}")
        lines.append(f"    {dim}  → {r.action}; evidence: {', '.join(r.evidence[:3])}{off}")
    if not ins.recommendations:
        lines.append("    (none in this window)")
    return "\n".join(lines)


def summarised(recs: list[Recommendation], budget: int) -> list[Recommendation | tuple[str, int, float]]:
    """At most ``budget`` rows where every kind shows: its costliest targets, then one
    ``(kind, how many more, their saving)`` row for the rest of that kind."""
    kinds: dict[str, list[Recommendation]] = {}
    for r in recs:  # already costliest first
        kinds.setdefault(r.kind, []).append(r)
    order = sorted(kinds, key=lambda k: -sum(r.saving_usd for r in kinds[k]))
    per_kind, longest = 1, max(map(len, kinds.values()), default=0)
    while per_kind < longest and sum(min(len(kinds[k]), per_kind + 1) for k in order) <= budget:
        per_kind += 1
    out: list[Recommendation | tuple[str, int, float]] = []
    for kind in order:
        rows = kinds[kind]
        shown = rows if len(rows) <= per_kind else rows[: per_kind - 1]
        out += shown
        if len(shown) < len(rows):
            rest = rows[len(shown):]
            out.append((kind, len(rest), sum(r.saving_usd for r in rest)))
    return out[:budget]


def render_markdown(ins: Insights, max_lines: int = 40) -> str:
    """A short report for the slash command: at most ``max_lines`` lines."""
    t = ins.totals
    prev = ins.previous
    lines = [f"**opik-cipx insights — {ins.window.label}**", "",
             f"Spend **{_money(ins)}** over {t.calls:,} calls "
             f"(vs previous window: {change(t.cost_usd, prev.cost_usd if prev else None)})."]
    if ins.by_day:
        days = f"{ins.by_day[0].key} → {ins.by_day[-1].key}"
        lines.append(f"Per day `{sparkline([g.cost_usd for g in ins.by_day])}` ({days})")
    models = ", ".join(f"{g.key} {_usd(g.cost_usd)}" for g in ins.by_model[:4])
    lines += ["", f"By model: {models or '-'}"]
    cats = ", ".join(f"{g.key} {_usd(g.cost_usd)}" for g in ins.by_category[:6])
    lines.append(f"Where the tokens went: {cats or '-'}")
    recs = ins.recommendations
    lines += ["", "| kind | target | calls | uses | saving |", "|---|---|---:|---:|---:|"]
    budget = max_lines - len(lines) - 3
    for r in summarised(recs, budget):
        if isinstance(r, tuple):
            kind, n, saving = r
            lines.append(f"| {kind} | … {n} more | | | {_usd(saving)} |")
        else:
            target = stats._fit(r.target, 40)
            lines.append(f"| {r.kind} | {target} | {r.calls_present} | {r.uses} | {_usd(r.saving_usd)} |")
    if not recs:
        lines.append("| (none) | | | | |")
    lines += ["", f"_{SAVING_NOTE}; `opik-cipx insights --json` lists the evidence call ids._"]
    return "\n".join(lines[:max_lines])


def to_json(ins: Insights) -> dict[str, Any]:
    t = ins.totals
    return {
        "window": asdict(ins.window),
        "totals": {**asdict(t), "prompt_tokens": t.prompt_tokens, "cache_hit_rate": t.cache_hit_rate,
                   "at_list_usd": ins.at_list_usd, "api_billed_usd": t.cost_usd - ins.at_list_usd},
        "previous": asdict(ins.previous) if ins.previous else None,
        "by_model": [asdict(g) for g in ins.by_model],
        "by_project": [asdict(g) for g in ins.by_project],
        "by_day": [asdict(g) for g in ins.by_day],
        "where_tokens_went": [{**asdict(g), "top_items": [asdict(i) for i in ins.top_items.get(g.key, [])]}
                              for g in ins.by_category],
        "saving_note": SAVING_NOTE,
        "recommendations": [asdict(r) for r in ins.recommendations],
    }


def dumps(ins: Insights) -> str:
    return json.dumps(to_json(ins), indent=2)

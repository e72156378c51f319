"""Local analytics over the spool: totals, cost, cache-hit rate and per-group tables.

Pure SQL over the tables the gateway already writes (``exchanges``,
``attribution``, ``attribution_items``), so ``opik-cipx stats`` works with
the gateway down, on a read-only connection, and the viewer's breakdowns
come from the same queries.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..store import bodies

GROUPS = ("model", "category", "mcp", "project", "session", "day", "client")
# An LLM call's client follows from its wire kind (model.client_of): Responses calls are Codex's.
CLIENT_SQL = "CASE WHEN kind = 'responses' THEN 'codex' ELSE 'claude-code' END"
WINDOWS = ("today", "week", "month")

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Claude Code states its cwd in the system prompt's environment section ("Primary working
# directory: /path" today, "Working directory: /path" in older versions). Inside the JSON
# body a newline is the two bytes backslash-n, so the path stops at a backslash or a quote.
_CWD = re.compile(rb"(?:Primary w|W)orking directory: (/[^\\\"\r\n]*)")
_CWD_SCAN_LIMIT = 512 * 1024  # the environment section sits near the start of the system prompt
NO_PROJECT = "(unknown)"
NO_SESSION = "(none)"


class StatsError(Exception):
    """A request the user can fix: a bad window, a missing spool."""


@dataclass(frozen=True, slots=True)
class Window:
    label: str
    since: float | None  # epoch seconds, inclusive; None = from the first call
    until: float | None = None  # exclusive; None = now and later
    sessions: tuple[str, ...] | None = None  # only these sessions (insights --project); None = all


def window(name: str | None = None, since: str | None = None, *, now: float | None = None) -> Window:
    """``today`` (since local midnight), ``week`` / ``month`` (the last 7 / 30 days), or ``since``.

    ``since`` is a relative age (``90m``, ``12h``, ``3d``, ``2w``) or a local ISO date or
    date-time (``2026-05-01``, ``2026-05-01T09:30``).
    """
    now = time.time() if now is None else now
    if name is not None and since is not None:
        raise StatsError("give either a window (today|week|month) or --since, not both")
    if name is None and since is None:
        return Window("all time", None)
    if name == "today":
        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        return Window("today", midnight.timestamp())
    if name == "week":
        return Window("last 7 days", now - 7 * 86400)
    if name == "month":
        return Window("last 30 days", now - 30 * 86400)
    if name is not None:
        # `stats 2026-05-01` and `stats 3d` read as --since: what people type first.
        if not (_RELATIVE.match(name) or _is_date(name)):
            raise StatsError(f"unknown window {name!r}: use today, week, month, "
                             "an age like 3d or a date like 2026-05-01")
        since = name
    assert since is not None
    rel = _RELATIVE.match(since)
    if rel:
        return Window(f"since {since.strip()} ago", now - float(rel.group(1)) * _UNIT_SECONDS[rel.group(2)])
    try:
        at = datetime.fromisoformat(since.strip())
    except ValueError:
        raise StatsError(f"cannot read --since {since!r}: use e.g. 3d, 12h, 2026-05-01 or 2026-05-01T09:30") from None
    return Window(f"since {at.isoformat(sep=' ')}", at.timestamp())


def _is_date(text: str) -> bool:
    try:
        datetime.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class Totals:
    requests: int = 0  # every proxied request, LLM or not
    calls: int = 0  # LLM calls (POST /v1/messages)
    errors: int = 0  # LLM calls whose outcome was not complete
    input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # over calls with a known price
    unknown_cost_calls: int = 0  # calls with usage but no price: never counted as $0
    first_at: float | None = None
    last_at: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    @property
    def cache_hit_rate(self) -> float | None:
        """Share of prompt tokens served from the cache; None when there were none."""
        prompt = self.prompt_tokens
        return self.cache_read_tokens / prompt if prompt else None


@dataclass(slots=True)
class Group:
    """One row of a per-group table.

    For ``model``/``project``/``session``/``day`` the token columns are the calls' billed
    usage; for ``category``/``mcp`` ``tokens``, ``bytes`` and ``cost_usd`` are the attributed
    shares (request side; the ``output`` category is the response side).
    """

    key: str
    calls: int = 0
    input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    tokens: int = 0
    bytes: int = 0
    cost_usd: float = 0.0
    unknown_cost_calls: int = 0

    @property
    def cache_hit_rate(self) -> float | None:
        prompt = self.input_tokens + self.cache_write_tokens + self.cache_read_tokens
        return self.cache_read_tokens / prompt if prompt else None


@dataclass(slots=True)
class Report:
    window: Window
    totals: Totals
    by: str | None = None
    groups: list[Group] = field(default_factory=list)


def _where(win: Window, alias: str = "") -> tuple[str, list[Any]]:
    prefix = f"{alias}." if alias else ""
    clauses = [f"{prefix}kind IN ('messages', 'responses')"]
    params: list[Any] = []
    if win.since is not None:
        clauses.append(f"{prefix}started_at >= ?")
        params.append(win.since)
    if win.until is not None:
        clauses.append(f"{prefix}started_at < ?")
        params.append(win.until)
    if win.sessions is not None:
        # One JSON parameter rather than one per session: a project can hold thousands.
        clauses.append(f"{prefix}session_id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(win.sessions)))
    return " AND ".join(clauses), params


where = _where  # the window's SQL condition, for the other reports


def totals(conn: sqlite3.Connection, win: Window) -> Totals:
    where, params = _where(win)
    out = Totals()
    (out.calls, out.errors, out.input_tokens, out.cache_write_tokens, out.cache_read_tokens,
     out.output_tokens, cost, out.unknown_cost_calls, out.first_at, out.last_at) = conn.execute(
        "SELECT count(*), total(outcome != 'complete'), total(input_tokens),"
        " total(cache_creation_input_tokens), total(cache_read_input_tokens), total(output_tokens),"
        " total(cost_usd), total(usage IS NOT NULL AND cost_usd IS NULL), min(started_at), max(started_at)"
        f" FROM exchanges WHERE {where}",
        params,
    ).fetchone()
    out.cost_usd = float(cost)
    for name in ("errors", "input_tokens", "cache_write_tokens", "cache_read_tokens", "output_tokens",
                 "unknown_cost_calls"):
        setattr(out, name, int(getattr(out, name)))
    all_where = ["1"]
    all_params: list[Any] = []
    if win.since is not None:
        all_where.append("started_at >= ?")
        all_params.append(win.since)
    if win.until is not None:
        all_where.append("started_at < ?")
        all_params.append(win.until)
    out.requests = conn.execute(
        f"SELECT count(*) FROM exchanges WHERE {' AND '.join(all_where)}", all_params
    ).fetchone()[0]
    return out


_USAGE_COLUMNS = (
    "count(*), total(input_tokens), total(cache_creation_input_tokens), total(cache_read_input_tokens),"
    " total(output_tokens), total(cost_usd), total(usage IS NOT NULL AND cost_usd IS NULL)"
)


def _usage_group(key: str, row: tuple[Any, ...]) -> Group:
    calls, inp, cw, cr, out, cost, unknown = row
    return Group(key, int(calls), int(inp), int(cw), int(cr), int(out), int(inp + cw + cr + out), 0,
                 float(cost), int(unknown))


def _by_column(conn: sqlite3.Connection, win: Window, expr: str, missing: str) -> list[Group]:
    where, params = _where(win)
    rows = conn.execute(
        f"SELECT {expr} AS k, {_USAGE_COLUMNS} FROM exchanges WHERE {where} GROUP BY k", params
    ).fetchall()
    return [_usage_group(missing if r[0] is None else str(r[0]), r[1:]) for r in rows]


def _by_items(conn: sqlite3.Connection, win: Window, key_expr: str, extra: str = "") -> list[Group]:
    where, params = _where(win, "e")
    rows = conn.execute(
        f"SELECT {key_expr} AS k, count(DISTINCT i.exchange_id), total(i.bytes), total(i.tokens),"
        " total(i.cost_usd) FROM attribution_items i JOIN exchanges e ON e.id = i.exchange_id"
        f" WHERE {where}{extra} GROUP BY k",
        params,
    ).fetchall()
    return [Group(str(k), int(n), tokens=int(t), bytes=int(b), cost_usd=float(c)) for k, n, b, t, c in rows]


def mcp_server(item: str) -> str:
    """The server an ``mcp`` item belongs to: items are ``<server>/tool:…``, ``<server>/io:…``,
    ``<server>/instructions``; the shared instructions heading has no server."""
    server, sep, _ = item.partition("/")
    return server if sep and server else "(shared)"


def _by_mcp(conn: sqlite3.Connection, win: Window) -> list[Group]:
    # Grouped in SQL by item, then folded by server here: the server is the text before the
    # first "/", which SQLite can express only clumsily.
    where, params = _where(win, "e")
    rows = conn.execute(
        "SELECT i.item, i.exchange_id, i.bytes, i.tokens, i.cost_usd FROM attribution_items i"
        " JOIN exchanges e ON e.id = i.exchange_id"
        f" WHERE {where} AND i.category = 'mcp'",
        params,
    )
    groups: dict[str, Group] = {}
    seen: dict[str, set[str]] = {}
    for item, exchange_id, size, tokens, cost in rows:
        server = mcp_server(item)
        g = groups.setdefault(server, Group(server))
        g.bytes += size
        g.tokens += tokens
        g.cost_usd += cost or 0.0
        seen.setdefault(server, set()).add(exchange_id)
    for server, ids in seen.items():
        groups[server].calls = len(ids)
    return list(groups.values())


def session_projects(conn: sqlite3.Connection, win: Window) -> dict[str | None, str]:
    """Each session's project directory, read from the system prompt of its first call."""
    where, params = _where(win)
    rows = conn.execute(
        # With min(), SQLite takes the bare column (id) from the row holding the minimum.
        f"SELECT session_id, id, min(started_at) FROM exchanges WHERE {where} AND request_body_size > 0"
        " GROUP BY session_id",
        params,
    ).fetchall()
    return {session: project_of(conn, exchange_id) for session, exchange_id, _ in rows}


def project_of(conn: sqlite3.Connection, exchange_id: str) -> str:
    """The working directory Claude Code announced in this call's request, or ``(unknown)``.

    Reads the stored chunks in order and stops at the first match, so a 1 MB body costs
    only its first few chunks. Read directly rather than through ``Spool.get`` so a
    read-only connection works (``Spool`` migrates on open).
    """
    row = conn.execute("SELECT request_list FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
    if row is None or row[0] is None:
        return NO_PROJECT
    seen = b""
    scanned = 0
    for chunk_id in bodies.resolve(conn, row[0]):
        blob = conn.execute("SELECT data FROM blobs WHERE rowid = ?", (chunk_id,)).fetchone()
        if blob is None:
            break
        # Keep a tail of the previous chunk so a match across a chunk boundary is found.
        data = zlib.decompress(blob[0])
        seen = seen[-256:] + data
        match = _CWD.search(seen)
        if match:
            return match.group(1).decode("utf-8", "replace").rstrip("/") or "/"
        scanned += len(data)
        if scanned > _CWD_SCAN_LIMIT:
            break
    return NO_PROJECT


def _by_project(conn: sqlite3.Connection, win: Window) -> list[Group]:
    projects = session_projects(conn, win)
    merged: dict[str, Group] = {}
    for g in _by_column(conn, win, "session_id", NO_SESSION):
        session = None if g.key == NO_SESSION else g.key
        key = projects.get(session, NO_PROJECT)
        m = merged.setdefault(key, Group(key))
        for name in ("calls", "input_tokens", "cache_write_tokens", "cache_read_tokens", "output_tokens",
                     "tokens", "unknown_cost_calls"):
            setattr(m, name, getattr(m, name) + getattr(g, name))
        m.cost_usd += g.cost_usd
    return list(merged.values())


def groups(conn: sqlite3.Connection, win: Window, by: str) -> list[Group]:
    """Per-group rows, most expensive first (then most tokens, then key)."""
    if by == "model":
        out = _by_column(conn, win, "model", "(unknown)")
    elif by == "session":
        out = _by_column(conn, win, "session_id", NO_SESSION)
    elif by == "day":
        out = _by_column(conn, win, "date(started_at, 'unixepoch', 'localtime')", "?")
    elif by == "project":
        out = _by_project(conn, win)
    elif by == "category":
        out = _by_items(conn, win, "i.category")
    elif by == "mcp":
        out = _by_mcp(conn, win)
    elif by == "client":
        out = _by_column(conn, win, CLIENT_SQL, "?")
    else:
        raise StatsError(f"unknown grouping {by!r}: use one of {', '.join(GROUPS)}")
    if by == "day":
        return sorted(out, key=lambda g: g.key)
    return sorted(out, key=lambda g: (-g.cost_usd, -g.tokens, g.key))


def report(conn: sqlite3.Connection, win: Window, by: str | None = None) -> Report:
    return Report(win, totals(conn, win), by, groups(conn, win, by) if by else [])


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to the spool; works while the gateway writes (WAL) or is down."""
    if not path.exists():
        raise StatsError(f"no spool at {path}: the gateway has not captured anything yet")
    uri = path.resolve().as_uri()
    try:
        return _probe(sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=5.0))
    except sqlite3.Error as exc:
        if os.access(path.parent, os.W_OK):
            raise StatsError(f"cannot read the spool at {path}: {exc}") from exc
    # A read-only directory (a mounted backup, a copied home): WAL mode needs to create its
    # -shm file there, which fails. Nothing can be writing to it either, so read it as is.
    try:
        return _probe(sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=5.0))
    except sqlite3.Error as exc:
        raise StatsError(f"cannot read the spool at {path}: {exc}") from exc


def _probe(conn: sqlite3.Connection) -> sqlite3.Connection:
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("SELECT 1 FROM exchanges LIMIT 1").fetchall()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


# --- rendering ----------------------------------------------------------------------------------


def _cost(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _group_cost(g: Group) -> str:
    """A group whose calls have no known price costs "unknown", never $0.0000; a group with
    some unpriced calls shows the known part with a "+?"."""
    if g.unknown_cost_calls and g.unknown_cost_calls >= g.calls:
        return "unknown"
    return _cost(g.cost_usd) + ("+?" if g.unknown_cost_calls else "")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _stamp(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")


def render_text(rep: Report) -> str:
    t = rep.totals
    lines = [
        f"opik-cipx stats — {rep.window.label}  ({_stamp(t.first_at)} → {_stamp(t.last_at)})",
        "",
        f"  LLM calls      {t.calls:>14,}   ({t.errors:,} not complete; {t.requests:,} requests in all)",
        f"  cost           {_cost(t.cost_usd):>14}"
        + (f"   (+ {t.unknown_cost_calls:,} calls with no known price)" if t.unknown_cost_calls else ""),
        f"  input tokens   {t.input_tokens:>14,}",
        f"  cache writes   {t.cache_write_tokens:>14,}",
        f"  cache reads    {t.cache_read_tokens:>14,}",
        f"  output tokens  {t.output_tokens:>14,}",
        f"  cache-hit rate {_rate(t.cache_hit_rate):>14}",
    ]
    if rep.by:
        lines.append("")
        key_width = min(48, max([len(rep.by)] + [len(g.key) for g in rep.groups]))
        if rep.by in ("category", "mcp"):
            lines.append(f"  {rep.by:<{key_width}} {'calls':>7} {'bytes':>13} {'tokens':>12} {'cost':>11} {'share':>7}")
            for g in rep.groups:
                share = g.cost_usd / t.cost_usd if t.cost_usd else None
                lines.append(f"  {_fit(g.key, key_width):<{key_width}} {g.calls:>7,} {g.bytes:>13,} {g.tokens:>12,}"
                             f" {_cost(g.cost_usd):>11} {_rate(share):>7}")
        else:
            lines.append(f"  {rep.by:<{key_width}} {'calls':>7} {'input':>11} {'cache wr':>11} {'cache rd':>12}"
                         f" {'output':>10} {'hit':>6} {'cost':>11}")
            for g in rep.groups:
                lines.append(f"  {_fit(g.key, key_width):<{key_width}} {g.calls:>7,} {g.input_tokens:>11,}"
                             f" {g.cache_write_tokens:>11,} {g.cache_read_tokens:>12,} {g.output_tokens:>10,}"
                             f" {_rate(g.cache_hit_rate):>6} {_group_cost(g):>11}")
        if not rep.groups:
            lines.append("  (nothing in this window)")
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def to_json(rep: Report) -> dict[str, Any]:
    t = rep.totals
    out: dict[str, Any] = {
        "window": asdict(rep.window),
        "totals": {**asdict(t), "prompt_tokens": t.prompt_tokens, "cache_hit_rate": t.cache_hit_rate},
        "by": rep.by,
    }
    if rep.by:
        out["groups"] = [
            {**asdict(g), "cache_hit_rate": g.cache_hit_rate,
             "cost_usd": None if g.unknown_cost_calls and g.unknown_cost_calls >= g.calls else g.cost_usd}
            for g in rep.groups
        ]
    return out


def dumps(rep: Report) -> str:
    return json.dumps(to_json(rep), indent=2)

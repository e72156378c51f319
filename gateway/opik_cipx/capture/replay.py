"""``opik-cipx replay``: stored raw captures through today's rules, offline and idempotent.

After an upgrade (a parser fixed, a price table changed, attribution rules
refined) the spool still holds what older rules derived. :func:`rederive` turns a
stored call back into the :class:`~opik_cipx.proxy.recorder.Recorder` capture
once saw, runs it through the same builder and the same analysis, and keeps
what only the wire could know (timings, headers, the wire's verdict on how the
call ended). :func:`replay` stores what changed, one call per transaction, so a
running gateway's capture keeps writing beside it (WAL; SQLite's lock serializes
the writes); a second replay changes nothing.

``reship`` derives the spans again with the same ids (span ids come from the
exchange id and start, the trace id is kept from the session's state), so Opik
upserts them. A session's trace is built from all its calls, so re-shipping works
on whole sessions; a call whose body retention pruned cannot be derived again and
is skipped and counted (its spans were shipped before it could be pruned), and its
session is not re-shipped, so Opik's trace never loses those calls' totals.
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..attribute.analysis import Captured, analyze
from ..attribute.responses import stored_chain
from ..model import CallKind, Exchange, Outcome
from ..pricing import PriceTable
from ..proxy.recorder import HeaderList, Recorder
from ..ship.records import session_key
from ..ship.span import TraceState
from ..store import attribution as attribution_store
from ..store.migrations import transaction
from ..store.spool import BodyPruned, Spool
from .exchange import build_with_summary
from .stages import analyze_messages

if TYPE_CHECKING:
    from ..config import Settings

# How a call ended that only the wire could tell: the bytes alone cannot say it again.
WIRE_VERDICTS = frozenset({Outcome.UNREACHABLE, Outcome.TRUNCATED, Outcome.CLIENT_GONE})

Record = Callable[[Spool, Captured], None]  # the span stage's store step (ship/stage.py)


@dataclass(slots=True)
class ReplaySummary:
    selected: int = 0
    replayed: int = 0  # derived again
    changed: int = 0  # ... and stored, because something differed
    pruned: int = 0  # skipped: retention pruned the body
    failed: int = 0
    reshipped_sessions: int = 0
    reshipped_calls: int = 0
    reship_skipped_sessions: int = 0  # some of their bodies were pruned: not rebuilt for Opik
    changes: dict[str, int] = field(default_factory=dict)  # which fields changed, how often
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (f"replay: {self.replayed} of {self.selected} calls replayed, {self.changed} changed, "
                f"{self.pruned} skipped (body pruned by retention), {self.failed} failed")
        if self.reshipped_sessions:
            text += f"; {self.reshipped_calls} calls of {self.reshipped_sessions} sessions queued for Opik again"
        if self.reship_skipped_sessions:
            text += (f"; {self.reship_skipped_sessions} sessions not re-shipped (retention pruned some of their "
                     "bodies; Opik keeps what it has)")
        return text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recorder_from(ex: Exchange) -> Recorder:
    """The Recorder capture once built ``ex`` from, as far as the spool kept it.

    The response body is stored decoded, so its content-encoding header is left out here
    (and put back on the result); timings are relative to a start of 0.
    """
    rec = Recorder(ex.method, ex.path, HeaderList(list(ex.request_headers.items())))
    rec.id = ex.id
    rec.wall_start = ex.started_at
    rec.t_start = 0.0
    rec.body = ex.request_body
    if ex.status is not None:
        head = tuple((k.encode("latin-1"), v.encode("latin-1"))
                     for k, v in ex.response_headers.items() if k != "content-encoding")
        rec.response_head(ex.status, head)
        rec.t_head = (ex.ttfb_ms or 0.0) / 1000.0
        if ex.response_body:
            parts = ex.response_body.split(b"\n") if ex.method == "WEBSOCKET" else [ex.response_body]
            rec.chunks = parts
            rec.times = array("d", [rec.t_head] * len(parts))
    rec.t_end = None if ex.duration_ms is None else ex.duration_ms / 1000.0
    if ex.outcome in WIRE_VERDICTS:
        rec.forced_outcome = ex.outcome
        rec.error = ex.error
    return rec


def rederive(conn: sqlite3.Connection, stored: Exchange, prices: PriceTable | None) -> Captured:
    """``stored`` derived again with today's builder, analysis and ``prices``."""
    messages = stored.kind is CallKind.MESSAGES  # its speed from the walk, as capture takes it
    ex, summary = build_with_summary(recorder_from(stored), prices, body_speed=not messages)
    # What the wire alone knew stays as captured.
    for name in ("request_headers", "response_headers", "response_body", "response_encoding", "streamed", "ttfb_ms",
                 "ttft_ms", "duration_ms", "session_id", "agent_id", "request_bytes", "response_bytes"):
        setattr(ex, name, getattr(stored, name))
    if stored.outcome in WIRE_VERDICTS and ex.outcome is stored.outcome:
        ex.error = stored.error  # the wire's words, not the same words twice
    if not ex.is_llm_call:
        return Captured(ex)
    content = summary.content if summary is not None else []
    kept = attribution_store.load(conn, ex.id) or {}
    commands = tuple(kept.get("commands") or ())
    if ex.kind is CallKind.RESPONSES:
        # The chain this turn was analysed with (earlier turns' calls and context), as stored.
        calls, inherited = stored_chain(kept.get("cache_split") or {})
        return Captured(ex, analyze(ex, prices, content, calls=calls, inherited=inherited), content)
    return Captured(ex, analyze_messages(ex, prices, content, commands), content, commands)


def _derived(ex: Exchange) -> dict[str, Any]:
    """The fields of an Exchange that capture derives from the bytes (what replay may change)."""
    return {"model": ex.model, "stop_reason": ex.stop_reason, "outcome": str(ex.outcome), "error": ex.error,
            "usage": None if ex.usage is None else asdict(ex.usage),
            "cost": None if ex.cost is None else asdict(ex.cost)}


def differences(conn: sqlite3.Connection, stored: Exchange, item: Captured) -> list[str]:
    """Which derived fields (and ``attribution``) ``item`` changes against what is stored."""
    old, new = _derived(stored), _derived(item.exchange)
    out = [k for k in old if json.dumps(old[k], sort_keys=True) != json.dumps(new[k], sort_keys=True)]
    if item.attribution is not None:
        before = attribution_store.load(conn, stored.id)
        after = json.loads(json.dumps(attribution_store.summary(item.attribution, item.commands)))
        if before != after:
            out.append("attribution")
    return out


def select(conn: sqlite3.Connection, *, since: float | None = None, session: str | None = None) -> list[str]:
    """The ids of the stored calls to replay, oldest first."""
    where: list[str] = ["1"]
    params: list[Any] = []
    if since is not None:
        where.append("started_at >= ?")
        params.append(since)
    if session is not None:
        where.append("session_id = ?")
        params.append(session)
    rows = conn.execute(f"SELECT id FROM exchanges WHERE {' AND '.join(where)} ORDER BY started_at, id", params)
    return [r[0] for r in rows]


def whole_sessions(conn: sqlite3.Connection, ids: list[str]) -> list[list[str]]:
    """``ids`` grown to every call of the sessions they belong to, grouped by trace, oldest first."""
    wanted = set(ids)
    rows = conn.execute("SELECT id, session_id FROM exchanges ORDER BY started_at, id").fetchall()
    sessions = {s for i, s in rows if i in wanted and s is not None}
    groups: dict[str, list[str]] = {}
    for i, s in rows:
        if i in wanted or (s is not None and s in sessions):
            groups.setdefault(session_key(s, i), []).append(i)
    return list(groups.values())


def replay(
    spool: Spool,
    prices: PriceTable | None,
    ids: Iterable[str],
    *,
    reship: Record | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplaySummary:
    """Derive ``ids`` again and store what changed, one call per transaction. With ``reship``,
    the ids are grown to whole sessions and each session's spans are queued again in one
    transaction with its calls (a live capture of the same session waits rather than interleave).
    One call's bytes are held at a time."""
    todo = list(ids)
    groups = whole_sessions(spool.conn, todo) if reship is not None else [[i] for i in todo]
    out = ReplaySummary(selected=sum(map(len, groups)))
    done = 0
    for group in groups:
        # A session some of whose bodies retention pruned cannot be rebuilt whole: re-shipping the
        # rest would overwrite its trace in Opik with smaller totals. Its calls are replayed here only.
        ship = reship if reship is not None and not _any_pruned(spool.conn, group) else None
        if reship is not None and ship is None:
            out.reship_skipped_sessions += 1
        # Without reship nothing is held while deriving: only a call that changed takes the lock.
        with transaction(spool.conn) if ship is not None else nullcontext():
            if ship is not None:
                _fresh_trace(spool.conn, _key(spool.conn, group[0]))
                out.reshipped_sessions += 1
            for exchange_id in group:
                item = _one(spool, prices, exchange_id, out)
                if item is not None and ship is not None and item.exchange.is_llm_call:
                    spool.conn.execute("DELETE FROM ship_marks WHERE exchange_id = ?", (exchange_id,))
                    ship(spool, item)
                    out.reshipped_calls += 1
                done += 1
                if progress is not None:
                    progress(done, out.selected)
    return out


def _any_pruned(conn: sqlite3.Connection, ids: list[str]) -> bool:
    for i in range(0, len(ids), 500):
        batch = ids[i : i + 500]
        marks = ", ".join("?" for _ in batch)
        if conn.execute(f"SELECT 1 FROM exchanges WHERE id IN ({marks}) AND body_pruned_at IS NOT NULL LIMIT 1",
                        batch).fetchone():
            return True
    return False


def _key(conn: sqlite3.Connection, exchange_id: str) -> str:
    row = conn.execute("SELECT session_id FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
    return session_key(row[0] if row else None, exchange_id)


def _one(spool: Spool, prices: PriceTable | None, exchange_id: str, out: ReplaySummary) -> Captured | None:
    """One call derived again, stored if anything changed (in its own savepoint); None if skipped."""
    try:
        stored = spool.get(exchange_id)
        if stored is None:
            return None  # gone since it was selected
        item = rederive(spool.conn, stored, prices)
        changed = differences(spool.conn, stored, item)
        if changed:
            with transaction(spool.conn):
                spool.add(item.exchange)
                if item.attribution is not None:
                    attribution_store.save(spool.conn, item.exchange.id, item.attribution, item.commands)
            out.changed += 1
            for name in changed:
                out.changes[name] = out.changes.get(name, 0) + 1
        out.replayed += 1
        return item
    except BodyPruned:
        out.pruned += 1
    except Exception as exc:  # noqa: BLE001 - one bad call must not stop the replay
        out.failed += 1
        if len(out.errors) < 20:
            out.errors.append(f"{exchange_id}: {type(exc).__name__}: {exc}")
    return None


def _fresh_trace(conn: sqlite3.Connection, key: str) -> None:
    """Forget what the session's trace accumulated, keeping its id and start, so the calls
    queued again build the same trace with the same ids."""
    row = conn.execute("SELECT state FROM ship_sessions WHERE session_key = ?", (key,)).fetchone()
    conn.execute("DELETE FROM ship_sessions WHERE session_key = ?", (key,))
    conn.execute("DELETE FROM ship_tools WHERE session_key = ?", (key,))
    if row is not None:
        old = json.loads(row[0])
        fresh = TraceState(old["trace_id"], old["started_at"], old["started_at"])
        conn.execute("INSERT INTO ship_sessions (session_key, state) VALUES (?, ?)",
                     (key, json.dumps(asdict(fresh), separators=(",", ":"))))


class ReplayError(Exception):
    """Nothing to replay from (no spool yet)."""


def run(
    settings: Settings,
    prices: PriceTable | None,
    *,
    since: float | None = None,
    session: str | None = None,
    reship: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplaySummary:
    """The command's I/O edge: its own connection to the spool (WAL: the gateway may be running
    and capturing beside it), the span stage built as the gateway builds it."""
    from ..ship.stage import SpanStage
    from ..store.sessions import SessionTable
    from ..store.spool import connect

    path = settings.spool_path
    if not path.exists():
        raise ReplayError(f"no spool at {path}: the gateway has not captured anything yet")
    spool = Spool(connect(path))
    try:
        record: Record | None = None
        if reship:
            table = SessionTable(spool.conn)
            record = SpanStage(settings, sessions=lambda: table).record
        ids = select(spool.conn, since=since, session=session)
        return replay(spool, prices, ids, reship=record, progress=progress)
    finally:
        spool.close()

"""``opik-cipx reconcile``: what Claude Code's own transcripts miss, against what crossed the wire.

Claude Code writes one JSONL transcript per session (``~/.claude/projects/<project>/<id>.jsonl``,
the path its SessionStart hook reports). Each assistant turn there carries the ``requestId`` the
API answered with and the turn's ``usage``. Tools that read only those files (ccusage and others)
see just those turns; the wire also carries the calls no transcript records: side calls (titles,
topic checks), count_tokens, retried and failed attempts, and, depending on the version,
subagents and compactions. Matching the transcripts' request ids against the ``request-id``
response header of each stored call says, per session, how much a transcript-only view
undercounts, and whether any turn a transcript recorded never went through the gateway.

Everything here reads: the spool read-only, the transcripts as files.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import Window


@dataclass(slots=True)
class Tally:
    calls: int = 0
    input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens + self.output_tokens

    def add(self, inp: int, write: int, read: int, out: int, cost: float | None = None) -> None:
        self.calls += 1
        self.input_tokens += inp
        self.cache_write_tokens += write
        self.cache_read_tokens += read
        self.output_tokens += out
        self.cost_usd += cost or 0.0


@dataclass(frozen=True, slots=True)
class TranscriptTurn:
    request_id: str
    session_id: str
    model: str | None
    input_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    output_tokens: int


@dataclass(slots=True)
class SessionReconcile:
    session_id: str
    transcripts: list[str] = field(default_factory=list)
    wire: Tally = field(default_factory=Tally)
    transcript: Tally = field(default_factory=Tally)
    # Calls on the wire that no transcript records, by why: side, subagent, compaction, count_tokens,
    # failed (an error or retry the client never wrote down), ...
    wire_only: dict[str, Tally] = field(default_factory=dict)
    transcript_only: list[str] = field(default_factory=list)  # request ids the gateway never saw
    usage_mismatches: list[str] = field(default_factory=list)  # matched, but the numbers differ

    @property
    def missed_tokens(self) -> int:
        return sum(t.tokens for t in self.wire_only.values())

    @property
    def missed_cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.wire_only.values())


def transcript_turns(path: Path) -> Iterator[TranscriptTurn]:
    """Assistant turns with a request id, once each (a turn is written once per content block)."""
    seen: set[str] = set()
    try:
        fh = path.open(encoding="utf-8", errors="replace")
    except OSError:
        return
    with fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a half-written last line while Claude Code is still writing
            if not isinstance(entry, dict) or entry.get("type") != "assistant":
                continue
            request_id, message = entry.get("requestId"), entry.get("message")
            if not isinstance(request_id, str) or not isinstance(message, dict) or request_id in seen:
                continue
            raw_usage = message.get("usage")
            usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
            seen.add(request_id)
            yield TranscriptTurn(
                request_id, str(entry.get("sessionId") or path.stem), message.get("model"),
                _int(usage.get("input_tokens")), _int(usage.get("cache_creation_input_tokens")),
                _int(usage.get("cache_read_input_tokens")), _int(usage.get("output_tokens")),
            )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def transcript_files(session_id: str, registered: str | None, projects: Path) -> list[Path]:
    """The session's transcript (registered by the hook, else found by name) and any subagent
    transcripts Claude Code keeps beside it (``<id>/subagents/*.jsonl``)."""
    found: list[Path] = []
    if registered and Path(registered).is_file():
        found.append(Path(registered))
    else:
        found += sorted(projects.glob(f"*/{session_id}.jsonl"))
    for main in list(found):
        found += sorted((main.parent / session_id).rglob("*.jsonl"))
    return found


_WIRE = (
    "SELECT e.id, e.session_id, e.kind, e.outcome, e.agent_id, e.response_headers, e.input_tokens,"
    " e.cache_creation_input_tokens, e.cache_read_input_tokens, e.output_tokens, e.cost_usd, a.call_kind"
    " FROM exchanges e LEFT JOIN attribution a ON a.exchange_id = e.id"
    " WHERE e.session_id IS NOT NULL AND e.kind IN ('messages', 'count_tokens')"
)


def reconcile(
    conn: sqlite3.Connection, win: Window, projects: Path, session: str | None = None
) -> list[SessionReconcile]:
    where: list[str] = []
    params: list[Any] = []
    if win.since is not None:
        where.append("e.started_at >= ?")
        params.append(win.since)
    if win.until is not None:
        where.append("e.started_at < ?")
        params.append(win.until)
    if session is not None:
        where.append("e.session_id = ?")
        params.append(session)
    sql = _WIRE + "".join(f" AND {w}" for w in where) + " ORDER BY e.session_id, e.started_at"
    try:
        registered = dict(conn.execute("SELECT session_id, transcript_path FROM sessions").fetchall())
    except sqlite3.OperationalError:
        registered = {}
    out: dict[str, SessionReconcile] = {}
    # session -> request id -> (why it may be missing from a transcript, (in, write, read, out, cost))
    wire_by_request: dict[str, dict[str, tuple[str, tuple[int, int, int, int, float | None]]]] = {}
    for row in conn.execute(sql, params):
        (exchange_id, sid, kind, outcome, agent_id, headers, inp, write, read, outp, cost, call_kind) = row
        rec = out.get(sid) or out.setdefault(sid, SessionReconcile(sid))
        rec.wire.add(inp, write, read, outp, cost)
        request_id = _request_id(headers)
        why = _why(kind, outcome, agent_id, call_kind)
        wire_by_request.setdefault(sid, {})[request_id or f"?{exchange_id}"] = (why, (inp, write, read, outp, cost))
    for sid, rec in out.items():
        files = transcript_files(sid, registered.get(sid), projects)
        rec.transcripts = [str(p) for p in files]
        wire = wire_by_request.get(sid, {})
        matched: set[str] = set()
        for turn in _turns(files):
            rec.transcript.add(turn.input_tokens, turn.cache_write_tokens, turn.cache_read_tokens, turn.output_tokens)
            hit = wire.get(turn.request_id)
            if hit is None:
                rec.transcript_only.append(turn.request_id)
                continue
            matched.add(turn.request_id)
            if hit[1][:4] != (turn.input_tokens, turn.cache_write_tokens, turn.cache_read_tokens, turn.output_tokens):
                rec.usage_mismatches.append(turn.request_id)
        for request_id, (why, (inp, write, read, outp, cost)) in wire.items():
            if request_id not in matched:
                rec.wire_only.setdefault(why, Tally()).add(inp, write, read, outp, cost)
    return sorted(out.values(), key=lambda r: -r.missed_tokens)


def _turns(files: Iterable[Path]) -> Iterator[TranscriptTurn]:
    seen: set[str] = set()
    for path in files:
        for turn in transcript_turns(path):
            if turn.request_id not in seen:
                seen.add(turn.request_id)
                yield turn


def _request_id(headers: str | None) -> str | None:
    try:
        doc = json.loads(headers or "{}")
    except ValueError:
        return None
    value = doc.get("request-id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value else None


def _why(kind: str, outcome: str, agent_id: str | None, call_kind: str | None) -> str:
    if kind == "count_tokens":
        return "count_tokens"
    if outcome != "complete":
        return "failed or retried"
    if call_kind and call_kind != "main":
        return call_kind
    return "subagent" if agent_id else "main"


# --- rendering ------------------------------------------------------------------------------


def render_text(results: list[SessionReconcile], win: Window) -> str:
    if not results:
        return f"opik-cipx reconcile — {win.label}: no sessions on the wire in this window"
    total_wire = sum(r.wire.tokens for r in results)
    total_missed = sum(r.missed_tokens for r in results)
    missed_cost = sum(r.missed_cost_usd for r in results)
    share = 100.0 * total_missed / total_wire if total_wire else 0.0
    lines = [
        f"opik-cipx reconcile — {win.label}, {len(results)} session(s)",
        f"  transcripts miss {total_missed:,} of {total_wire:,} wire tokens ({share:.1f}%), ${missed_cost:,.4f}",
        "",
    ]
    for r in results:
        lines.append(f"session {r.session_id}")
        lines.append(f"  wire        {r.wire.calls:>5} calls {r.wire.tokens:>12,} tokens  ${r.wire.cost_usd:,.4f}")
        where = f"({len(r.transcripts)} file(s))" if r.transcripts else "(no transcript found)"
        lines.append(f"  transcript  {r.transcript.calls:>5} calls {r.transcript.tokens:>12,} tokens  {where}")
        for why, t in sorted(r.wire_only.items(), key=lambda kv: -kv[1].tokens):
            lines.append(f"    not in the transcript: {t.calls} {why} call(s), {t.tokens:,} tokens, ${t.cost_usd:,.4f}")
        if r.transcript_only:
            lines.append(f"    in the transcript but not on the wire: {len(r.transcript_only)} call(s) "
                         f"(made while the gateway was bypassed or down): {', '.join(r.transcript_only[:3])}")
        if r.usage_mismatches:
            lines.append(f"    usage differs for {len(r.usage_mismatches)} matched call(s): "
                         f"{', '.join(r.usage_mismatches[:3])}")
    return "\n".join(lines)


def to_json(results: list[SessionReconcile], win: Window) -> dict[str, Any]:
    def tally(t: Tally) -> dict[str, Any]:
        return {**asdict(t), "tokens": t.tokens}

    return {
        "window": asdict(win),
        "sessions": [
            {"session_id": r.session_id, "transcripts": r.transcripts, "wire": tally(r.wire),
             "transcript": tally(r.transcript), "wire_only": {k: tally(v) for k, v in r.wire_only.items()},
             "missed_tokens": r.missed_tokens, "missed_cost_usd": r.missed_cost_usd,
             "transcript_only": r.transcript_only, "usage_mismatches": r.usage_mismatches}
            for r in results
        ],
    }

"""reconcile: the calls Claude Code's transcripts miss, matched by request id against the wire."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from opik_cipx.model import CallKind, Cost, Exchange, Outcome, Usage
from opik_cipx.report import reconcile, stats
from opik_cipx.store.spool import Spool, connect
from tests.support.claude_code import needs_claude_code, run_claude_session
from tests.test_e2e_attribution import gateway_middle


def _call(n: int, session: str, *, kind: CallKind = CallKind.MESSAGES, outcome: Outcome = Outcome.COMPLETE,
          agent: str | None = None) -> Exchange:
    return Exchange(
        id=f"{n:032x}", started_at=time.time() - 60 + n, method="POST", path="/v1/messages", kind=kind,
        request_body=b"{}", status=200, session_id=session, agent_id=agent, model="claude-sonnet-4-5",
        outcome=outcome, response_headers={"request-id": f"req_{n}"},
        usage=Usage(input_tokens=10 * n, output_tokens=n, cache_read_input_tokens=100), cost=Cost(total_usd=0.001 * n),
    )


def _transcript(path: Path, session: str, turns: list[tuple[int, int, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"type": "user", "sessionId": session, "message": {"role": "user", "content": "hi"}})]
    for n, inp, out in turns:
        entry = {"type": "assistant", "sessionId": session, "requestId": f"req_{n}",
                 "message": {"id": f"msg_{n}", "model": "claude-sonnet-4-5",
                             "usage": {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": 100}}}
        lines += [json.dumps(entry)] * 2  # one line per content block, same request
    path.write_text("\n".join(lines) + "\n{\"type\": \"assist")  # and a half-written last line


def test_wire_calls_missing_from_the_transcript_are_counted_by_why(tmp_path: Path) -> None:
    spool = Spool(connect(tmp_path / "s.sqlite3"))
    for ex in (_call(1, "s1"), _call(2, "s1"), _call(3, "s1", agent="agent-1"),
               _call(4, "s1", kind=CallKind.COUNT_TOKENS), _call(5, "s1", outcome=Outcome.HTTP_ERROR)):
        spool.add(ex)
    projects = tmp_path / "projects"
    _transcript(projects / "-p" / "s1.jsonl", "s1", [(1, 10, 1), (2, 20, 2), (9, 5, 5)])
    [r] = reconcile.reconcile(spool.conn, stats.window(), projects)
    assert r.transcript.calls == 3 and r.wire.calls == 5
    assert {k: v.calls for k, v in r.wire_only.items()} == {"subagent": 1, "count_tokens": 1, "failed or retried": 1}
    assert r.missed_tokens == sum(10 * n + n + 100 for n in (3, 4, 5))
    assert r.missed_cost_usd == pytest.approx(0.012)
    assert r.transcript_only == ["req_9"] and r.usage_mismatches == []
    text = reconcile.render_text([r], stats.window())
    assert "not in the transcript: 1 subagent call(s)" in text and "req_9" in text


@pytest.mark.e2e
@pytest.mark.slow
@needs_claude_code()
def test_a_real_session_s_transcript_misses_its_side_calls(tmp_path: Path) -> None:
    from tests.support.cc_project import build_project, recording_rules, session_calls

    # The attribution e2e's session: a main turn, a slash command, a subagent, a compaction.
    ws = build_project(tmp_path / "ws")
    home = tmp_path / "cipx"
    result = run_claude_session(ws, session_calls("claude-sonnet-4-5-20250929"), script=recording_rules(),
                                middle=gateway_middle(home))
    assert all(c.rc == 0 for c in result.calls), result.middle_log
    session = result.calls[0].json()["session_id"]
    conn = stats.open_readonly(home / "spool" / "spool.sqlite3")
    try:
        [r] = reconcile.reconcile(conn, stats.window(), ws.home / ".claude" / "projects", session=session)
        wire_calls = conn.execute("SELECT count(*) FROM exchanges WHERE session_id = ? AND kind IN "
                                  "('messages', 'count_tokens')", (session,)).fetchone()[0]
    finally:
        conn.close()
    # Measured on this session (Claude Code 2.1.x): the subagent keeps its own transcript beside the
    # session's and every turn in either is on the wire with the same usage; the one call no
    # transcript records is the /compact summary, the biggest call of the session.
    assert len(r.transcripts) == 2, r.transcripts
    assert r.transcript_only == [] and r.usage_mismatches == [], "every transcript turn went through the gateway"
    assert r.wire.calls == wire_calls == r.transcript.calls + 1
    assert {k: v.calls for k, v in r.wire_only.items()} == {"compaction": 1}
    assert r.missed_tokens == r.wire.tokens - r.transcript.tokens > 0
    assert r.wire_only["compaction"].cost_usd > 0
    text = reconcile.render_text([r], stats.window())
    assert "not in the transcript: 1 compaction call(s)" in text

"""End to end: the real Claude Code CLI through the gateway, attribution read back from the spool.

Claude Code (from npm), the gateway (`opik-cipx proxy`) and the fake upstream run
together in a loopback-only network namespace. The project plants a marker in
every context source; each marker must land in its category in what the gateway
stored, and every stored call must meet the attribution invariants.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from opik_cipx.attribute.analysis import analyze, compaction_deltas
from opik_cipx.model import CallKind
from opik_cipx.pricing import PriceTable
from opik_cipx.store import attribution as attribution_store
from opik_cipx.store.spool import Spool, connect
from tests.support.cc_project import (
    COMMAND,
    MARKERS,
    build_project,
    markers_in,
    recording_rules,
    session_calls,
)
from tests.support.claude_code import (
    REPO_ROOT,
    needs_claude_code,
    run_claude_session,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_claude_code()]


def gateway_middle(home: Path) -> str:
    """A bash snippet for the session harness: start the gateway between Claude Code and the fake."""
    q = shlex.quote
    env = (f"CIPX_HOME={q(str(home))} CIPX_PORT=0 CIPX_UPSTREAM_URL=$UPSTREAM_URL "
           f"PYTHONPATH={q(str(REPO_ROOT / 'gateway'))}")
    return (
        f"{env} {q(sys.executable)} -m opik_cipx.cli proxy >$MIDDLE_LOG 2>&1 &\n"
        f"wait_file {q(str(home / 'port'))} || exit 92\n"
        f"echo http://127.0.0.1:$(cat {q(str(home / 'port'))}) > $MIDDLE_URL_FILE"
    )


def test_claude_code_session_through_the_gateway_is_attributed(tmp_path: Path) -> None:
    ws = build_project(tmp_path / "ws")
    cipx_home = tmp_path / "cipx"
    result = run_claude_session(
        ws, session_calls("claude-sonnet-4-5-20250929"), script=recording_rules(), middle=gateway_middle(cipx_home)
    )
    for call in result.calls:
        assert call.rc == 0, f"{call.argv}: {call.stderr}\n{result.middle_log}"

    # The harness stopped the gateway with SIGTERM: a graceful stop drains every capture.
    spool = Spool(connect(cipx_home / "spool" / "spool.sqlite3"))
    prices = PriceTable.builtin()
    try:
        exchanges = [spool.get(row.id) for row in spool.calls(limit=200)]
        llm = [ex for ex in exchanges if ex is not None and ex.kind is CallKind.MESSAGES]
        upstream_posts = result.messages_requests()
        assert len(llm) == len(upstream_posts) > 5
        # What the gateway stored is exactly what reached the upstream.
        assert sorted(ex.request_body for ex in llm) == sorted(r.body for r in upstream_posts)
        assert any(ex.kind is CallKind.OTHER and ex.method == "HEAD" for ex in exchanges if ex)

        seen: set[str] = set()
        kinds: set[str] = set()
        for ex in llm:
            attr = analyze(ex, prices)
            kinds.add(attr.call_kind)
            assert ex.usage is not None and ex.session_id
            assert attr.unattributed_bytes <= 0.005 * attr.body_bytes
            assert sum(c.tokens for c in attr.categories.values()) == ex.usage.prompt_tokens
            stored = attribution_store.load(spool.conn, ex.id)
            assert stored is not None and stored["call_kind"] == attr.call_kind
            # The attributor learns a command's name from its use in the same body.
            command_used = f"<command-name>/{COMMAND}</command-name>".encode() in ex.request_body
            for marker, info in markers_in(ex.request_body).items():
                if marker.startswith("MARKER_CMD_DESC") and not command_used:
                    # Until the command is used, its listing line reads exactly like a skill's.
                    continue
                for offset in info["offsets"]:
                    region = next(r for r in attr.segments() if r.start <= offset < r.end)
                    assert region.category == MARKERS[marker], (marker, region, ex.id)
                seen.add(marker)
        assert {"main", "subagent", "compaction"} <= kinds
        # Every context source showed up somewhere in the session.
        missing = {m for m in MARKERS if "CMD_DESC" not in m} - seen
        assert not missing, missing

        session = llm[0].session_id
        assert session is not None
        deltas = compaction_deltas(attribution_store.session_calls(spool.conn, session))
        assert len(deltas) == 1 and next(iter(deltas.values())).bytes_saved
    finally:
        spool.close()

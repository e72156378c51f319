"""The real Codex CLI through the gateway to the fake Responses upstream, over both transports."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from opik_cipx.model import CallKind, Exchange, Outcome
from opik_cipx.store.spool import Spool, connect
from tests.support.claude_code import REPO_ROOT
from tests.support.codex_cli import CodexWorkspace, generating, needs_codex, run_codex
from tests.support.codex_record import SHELL_JS
from tests.support.fake_responses import Answer

pytestmark = [pytest.mark.slow, needs_codex()]


def gateway_middle(home: Path) -> str:
    """Start the gateway between Codex and the fake; Codex's base URL is the gateway's /v1."""
    q = shlex.quote
    env = (f"CIPX_HOME={q(str(home))} CIPX_PORT=0 CIPX_UPSTREAM_URL=http://127.0.0.1:9 "
           f"CIPX_OPENAI_UPSTREAM_URL=$UPSTREAM_URL PYTHONPATH={q(str(REPO_ROOT / 'gateway'))}")
    return (
        f"{env} {q(sys.executable)} -m opik_cipx.cli proxy >$MIDDLE_LOG 2>&1 &\n"
        f"wait_file {q(str(home / 'port'))} || exit 92\n"
        f"echo http://127.0.0.1:$(cat {q(str(home / 'port'))})/v1 > $MIDDLE_URL_FILE"
    )


def stored(home: Path) -> tuple[list[Exchange], dict[str, dict[tuple[str, str], int]], dict[str, tuple[int, int]]]:
    """The stored calls in order, their request-side attribution items, (unattributed, body) bytes."""
    spool = Spool(connect(home / "spool" / "spool.sqlite3"))
    try:
        calls = sorted((ex for row in spool.calls(limit=100) if (ex := spool.get(row.id)) is not None),
                       key=lambda e: e.started_at)
        items: dict[str, dict[tuple[str, str], int]] = {}
        for ex_id, side, category, item, tokens in spool.conn.execute(
                "SELECT exchange_id, side, category, item, tokens FROM attribution_items"):
            if side == "request":
                items.setdefault(ex_id, {})[(category, item)] = tokens
        sizes = {r[0]: (r[1], r[2]) for r in spool.conn.execute(
            "SELECT exchange_id, unattributed_bytes, body_bytes FROM attribution")}
        return calls, items, sizes
    finally:
        spool.close()


SCRIPT = (Answer(custom=("exec", SHELL_JS), input_tokens=9000, cached_tokens=6000, output_tokens=50,
                 reasoning_tokens=20),
          Answer(text="shell said ok", input_tokens=9500, cached_tokens=9000, output_tokens=12, reasoning_tokens=4))


@pytest.mark.parametrize("websocket", [True, False], ids=["websocket", "http"])
def test_codex_exec_through_the_gateway(tmp_path: Path, websocket: bool) -> None:
    direct = run_codex(CodexWorkspace.create(tmp_path / "direct"), "run echo please", script=SCRIPT,
                       websocket=websocket)
    assert direct.rc == 0, direct.stderr
    home = tmp_path / "cipx"
    run = run_codex(CodexWorkspace.create(tmp_path / "via"), "run echo please", script=SCRIPT,
                    websocket=websocket, middle=gateway_middle(home))
    assert run.rc == 0, f"{run.stderr}\n{run.middle_log}"
    assert "shell said ok" in run.stdout and "cipx-shell-ok" in run.stderr
    # No fallback retries: relayed, the run is within a second of the direct one.
    assert run.seconds < direct.seconds + 1.0, (run.seconds, direct.seconds)

    exchanges, items, sizes = stored(home)
    calls = [ex for ex in exchanges if ex.kind is CallKind.RESPONSES]
    transports = {"WEBSOCKET" if websocket else "POST"}
    assert {ex.method for ex in calls} == transports
    billed = [ex for ex in calls if ex.usage is not None]
    assert len(billed) == len(generating(run.requests)) == 2
    assert [(ex.outcome, bool(ex.session_id), ex.error) for ex in calls] == [(Outcome.COMPLETE, True, None)] * len(calls)
    for ex, answer in zip(billed, SCRIPT, strict=True):
        u = ex.usage
        assert u is not None
        assert (u.input_tokens + u.cache_read_input_tokens, u.cache_read_input_tokens, u.output_tokens,
                u.reasoning_tokens) == (answer.input_tokens, answer.cached_tokens, answer.output_tokens,
                                        answer.reasoning_tokens)
    # What was stored is what reached the fake, byte for byte.
    assert sorted(ex.request_body for ex in calls) == sorted(r["body"] for r in run.requests)
    # Attribution: measured to within 1 %, the shell call's output in tool_io under its tool.
    for ex in calls:
        unattributed, body = sizes[ex.id]
        assert unattributed <= 0.01 * body
    follow_up = items[billed[1].id]
    assert follow_up.get(("tool_io", "exec"), 0) > 0 and ("tool_io", "(unknown)") not in follow_up
    assert sum(follow_up.values()) == billed[1].usage.prompt_tokens  # type: ignore[union-attr]
    assert follow_up[("system", "base instructions")] > 0  # inherited over WebSocket, sent over HTTP
    if websocket:
        assert all("permessage-deflate" in r["extensions"] for r in run.requests)  # compressed frames captured
        assert json.loads(billed[1].request_body)["previous_response_id"] == json.loads(
            billed[0].response_body.splitlines()[-1])["response"]["id"]

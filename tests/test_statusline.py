"""The status line: a segment from the per-session summary, plan windows, alerts, speed paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opik_cipx.capture import session_summary
from opik_cipx.report import statusline
from opik_cipx.report.statusline import render
from opik_cipx.segment import summary_of
from opik_cipx.server import Gateway
from opik_cipx.wire.ratelimit import is_limited, plan_windows
from tests.support.claude_code import needs_claude_code
from tests.support.fake_anthropic import FakeAnthropic, Turn

PLAN = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-utilization": "0.12",
    "anthropic-ratelimit-unified-5h-reset": "1765000000",
    "anthropic-ratelimit-unified-7d-utilization": "0.71",
    "anthropic-ratelimit-unified-7d-reset": "1765500000",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-overage-status": "rejected",
}


def test_plan_windows_are_parsed_and_absent_headers_mean_none() -> None:
    w = plan_windows(PLAN)
    assert w is not None and w["status"] == "allowed" and w["representative_claim"] == "five_hour"
    assert w["five_hour"] == {"utilization": 0.12, "reset": 1765000000, "status": None}
    assert w["seven_day"]["utilization"] == 0.71 and w["overage"]["status"] == "rejected"
    assert plan_windows({"request-id": "r"}) is None
    assert not is_limited(w) and is_limited({**w, "seven_day": {"utilization": 0.93}})
    assert is_limited({"status": "allowed_warning"})


def _summary(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "cost_usd": 1.874, "unpriced_calls": 0, "cache_hit_rate": 0.91, "last_outcome": "complete",
        "last_main": {"model": "claude-opus-4-8", "prompt_tokens": 84_000, "cost_usd": 0.2, "cold": False,
                      "top_categories": [["builtin_tools", 0.48], ["mcp", 0.06]]},
        "plan": plan_windows(PLAN),
    }
    doc.update(over)
    return doc


def test_the_segment_shows_cost_context_cache_categories_and_windows() -> None:
    text = render(_summary(), {"session_id": "s"}, alive=True)
    assert text == "◆ $1.87 · ctx 42% · cache 91% · tools 48% mcp 6% · 5h 12% 7d 71%"
    # Claude Code's own window size wins over the model's default.
    assert "ctx 8%" in render(_summary(), {"context_window": {"context_window_size": 1_000_000}}, alive=True)


def test_one_alert_the_most_urgent() -> None:
    deep = _summary(last_main={**_summary()["last_main"], "prompt_tokens": 180_000})
    assert render(deep, {}, alive=True).endswith(" · compact")
    limited = {**deep, "plan": plan_windows({**PLAN, "anthropic-ratelimit-unified-7d-utilization": "0.95"})}
    assert render(limited, {}, alive=True).endswith(" · limit (allowed)")
    down = {**limited, "last_outcome": "unreachable"}
    assert render(down, {}, alive=True).endswith(" · offline: upstream unreachable")
    cold = _summary(last_main={**_summary()["last_main"], "cold": True, "cost_usd": 0.42})
    assert render(cold, {}, alive=True).endswith(" · cold ($0.42)")
    long = _summary(last_main={**_summary()["last_main"], "prompt_tokens": 250_000, "model": "claude-sonnet-4-5[1m]"})
    assert render(long, {}, alive=True).endswith(" · 200k+")
    assert render(_summary(), {}, alive=False) == "◆ opik-cipx offline"


def _run(env: dict[str, str], payload: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opik_cipx.cli", "statusline"], input=json.dumps(payload),
                          env=env, capture_output=True, text=True, timeout=30)


def test_the_users_own_line_comes_first_and_the_switches_work(gateway_env: dict[str, str], isolated_home: Path) -> None:
    state = isolated_home / ".opik-cipx"
    state.mkdir(exist_ok=True)
    (state / statusline.WRAPPED_FILE).write_text(json.dumps({"command": "read x; echo \"mine: $x\" | cut -c1-40"}))
    out = _run(gateway_env, {"session_id": "s1"})
    assert out.returncode == 0 and out.stdout.splitlines() == ['mine: {"session_id": "s1"}', "◆ opik-cipx offline"]
    assert _run({**gateway_env, "OPIK_CIPX_STATUSLINE_DISPLAY": "0"}, {}).stdout.splitlines()[0].startswith("mine:")
    assert _run({**gateway_env, "OPIK_CIPX_STATUSLINE": "off"}, {}).stdout == "◆ opik-cipx offline\n"
    # Garbage in: still one line, still exit 0.
    bad = subprocess.run([sys.executable, "-m", "opik_cipx.cli", "statusline"], input="not json",
                         env={**gateway_env, "OPIK_CIPX_STATUSLINE": "off"}, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 0 and bad.stdout == "◆ opik-cipx offline\n" and bad.stderr == ""


async def test_captured_calls_keep_the_session_summary_current(make_settings: Any) -> None:
    async with FakeAnthropic([Turn(text="a"), Turn(text="b")]) as up:
        up.extra_headers = dict(PLAN)
        settings = make_settings(upstream_url=up.url, capture_worker=False)
        async with Gateway(settings) as gw:
            body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as client:
                for _ in range(2):
                    async with client.post(f"{gw.url}/v1/messages", json=body,
                                           headers={"x-api-key": "k", "X-Claude-Code-Session-Id": "sess-9"}) as r:
                        await r.read()
            assert gw.capture is not None and await gw.capture.drain(5)
            async with aiohttp.ClientSession() as client:
                async with client.get(f"{gw.url}/_cipx/status") as r:
                    status_doc = await r.json()
                async with client.get(f"{gw.url}/_cipx/metrics") as r:
                    metrics = await r.text()
            assert status_doc["plan"]["five_hour"]["utilization"] == 0.12 and status_doc["plan"]["at"]
            assert 'opik_cipx_plan_utilization{window="seven_day"} 0.71' in metrics
            assert gw.spool is not None
            cost = (await gw.spool.run(lambda sp: sp.conn.execute(
                "SELECT total(cost_usd) FROM exchanges WHERE session_id = 'sess-9'").fetchone()))[0]
    path = session_summary.summary_path(settings.home, "sess-9")
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    doc = summary_of(path.read_text())
    assert doc is not None
    assert doc["calls"] == 2 and abs(doc["cost_usd"] - cost) < 1e-12 and cost > 0
    assert doc["plan"]["seven_day"]["utilization"] == 0.71
    assert doc["last_main"]["prompt_tokens"] > 0 and doc["last_main"]["top_categories"]
    text = render(doc, {"session_id": "sess-9"}, alive=True)
    assert text.startswith(f"◆ ${cost:.2f} · ctx ") and "5h 12% 7d 71%" in text
    assert session_summary.SUMMARY_DIR == statusline.SUMMARY_DIR, "writer and reader agree on the place"
    assert session_summary.summary_path(settings.home, "../etc") is None


def test_statusline_imports_nothing_heavy(gateway_env: dict[str, str]) -> None:
    code = ("import sys, io; sys.stdin = io.TextIOWrapper(io.BytesIO(b'{}')); from opik_cipx.cli import main; "
            "sys.argv = ['opik-cipx', 'statusline']; main(); "
            "print([m for m in ('pydantic', 'asyncio', 'argparse', 'sqlite3', 'aiohttp') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], env=gateway_env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    assert os.environ.get("CIPX_HOME")


def _alive_pidfile(state: Path) -> None:
    """The pidfile as the gateway writes it, naming this (live) test process."""
    stat = Path("/proc/self/stat").read_text()
    ticks = stat.rsplit(") ", 1)[-1].split()[19]
    (state / "gateway.pid").write_text(f"{os.getpid()} {ticks}\n")
    (state / "port").write_text("9909\n")


def test_the_status_line_script_prints_the_users_line_then_the_prerendered_segment(tmp_path: Path) -> None:
    from opik_cipx.claude.launcher import render_statusline_script

    state = tmp_path / "state"
    (state / "sessions").mkdir(parents=True)
    script = tmp_path / "opik-cipx-statusline.sh"
    script.write_text(render_statusline_script())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CIPX_HOME": str(state)}

    def run(payload: str, **extra: str) -> str:
        return subprocess.run(["sh", str(script)], input=payload, env={**env, **extra}, capture_output=True,
                              text=True, timeout=30, check=True).stdout

    sid = "4aeeb350-9e90-4fd9-8efe-f3fc099a8789"
    payload = json.dumps({"session_id": sid, "model": {"id": "claude-opus-4-8"}})
    assert run(payload) == "◆ opik-cipx offline\n"
    _alive_pidfile(state)
    assert run(payload) == "◆ no calls captured yet\n"
    session_summary.write_summary(state, {**_summary(), "session_id": sid})
    assert run(payload) == render(_summary(), {}, alive=True) + "\n"
    (state / "statusline-wrapped.sh").write_text("read x; echo \"mine\"\n")
    assert run(payload) == "mine\n" + render(_summary(), {}, alive=True) + "\n"
    assert run(payload, OPIK_CIPX_STATUSLINE_DISPLAY="0") == "mine\n"
    assert run(payload, OPIK_CIPX_STATUSLINE="off").startswith("◆ $1.87")
    for hostile in ('{"session_id": "../../etc/passwd"}', '{"session_id": ".x"}', "garbage", ""):
        assert run(hostile, OPIK_CIPX_STATUSLINE="off") == "◆ no calls captured yet\n", hostile


@pytest.mark.e2e
@pytest.mark.slow
@needs_claude_code()
def test_the_real_claude_code_shows_our_segment_under_the_users_line(tmp_path: Path) -> None:
    """Claude Code interactive under tmux, through the gateway, with setup --apply's status line."""
    import shlex
    import shutil

    from tests.support.claude_code import REPO_ROOT, claude_bin, claude_env, run_in_netns
    from tests.support.gateway import free_port

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")  # tests/run.sh installs it
    home, project = tmp_path / "home", tmp_path / "project"
    (home / ".claude").mkdir(parents=True)
    project.mkdir()
    (home / "tmp").mkdir()
    (home / ".claude" / "settings.json").write_text(
        json.dumps({"statusLine": {"type": "command", "command": "echo MY-OWN-LINE"}}))
    # A user who has been through onboarding, trusts the project and approved the test key.
    (home / ".claude.json").write_text(json.dumps({
        "hasCompletedOnboarding": True, "theme": "dark",
        "customApiKeyResponses": {"approved": ["sk-ant-test"[-20:]], "rejected": []},
        "projects": {str(project): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}}}))
    port, q = free_port(), shlex.quote
    state, py, pane = home / ".opik-cipx", q(sys.executable), tmp_path / "pane.txt"
    script = f"""
set -u
cd {q(str(REPO_ROOT))}
export PYTHONPATH={q(str(REPO_ROOT / "gateway"))}:{q(str(REPO_ROOT))} CIPX_HOME={q(str(state))} CIPX_PORT={port}
{py} -m tests.support.fake_anthropic --port-file {q(str(tmp_path / "up.port"))} \\
    --header anthropic-ratelimit-unified-status=allowed \\
    --header anthropic-ratelimit-unified-5h-utilization=0.12 \\
    --header anthropic-ratelimit-unified-7d-utilization=0.71 >{q(str(tmp_path / "up.log"))} 2>&1 &
up=$!
for _ in $(seq 100); do [ -s {q(str(tmp_path / "up.port"))} ] && break; sleep 0.1; done
export CIPX_UPSTREAM_URL=http://127.0.0.1:$(cat {q(str(tmp_path / "up.port"))})
{py} -m opik_cipx.cli setup --apply >/dev/null && {py} -m opik_cipx.cli ensure-running -q || exit 90
export ANTHROPIC_BASE_URL=http://127.0.0.1:{port} TERM=xterm-256color
cd {q(str(project))}
tmux -L cipx new-session -d -s t -x 160 -y 40 {q(str(claude_bin()))}
sleep 6
tmux -L cipx send-keys -t t "hello there" Enter
for _ in $(seq 60); do
  sleep 0.5
  tmux -L cipx capture-pane -p -t t > {q(str(pane))}
  grep -q "5h 12%" {q(str(pane))} && break
done
tmux -L cipx kill-server
cd {q(str(REPO_ROOT))}
{py} -m opik_cipx.cli stats --by session --json
{py} -m opik_cipx.cli stop >/dev/null
kill $up
"""
    rc, out, err, _ = run_in_netns(script, env=claude_env(home), cwd=tmp_path, timeout=180)
    assert rc == 0, err
    lines = [line.strip() for line in pane.read_text().splitlines() if line.strip()]
    ours = next((i for i, line in enumerate(lines) if line.startswith("◆ $")), None)
    assert ours is not None, "\n".join(lines)
    assert lines[ours - 1].startswith("MY-OWN-LINE"), "the user's own line is kept, above ours"
    [group] = json.loads(out)["groups"]
    assert lines[ours].startswith(f"◆ ${group['cost_usd']:.2f} · ctx "), (lines[ours], group)
    assert "5h 12% 7d 71%" in lines[ours]


def test_a_1m_context_call_is_measured_against_its_window() -> None:
    wide = _summary(last_main={**_summary()["last_main"], "context_window": 1_000_000})
    assert "ctx 8%" in render(wide, {}, alive=True)
    assert session_summary._context_window('{"anthropic-beta": "claude-code-20250219,context-1m-2025-08-07"}') == 1_000_000
    assert session_summary._context_window('{"anthropic-beta": "claude-code-20250219"}') is None


def test_a_subscription_login_is_priced_at_list_and_labelled_so() -> None:
    assert render(_summary(at_list=True), {}, alive=True).startswith("◆ $1.87 at list · ctx ")
    assert session_summary._credential('{"x-cipx-credential": "oauth"}') == "oauth"

"""The plugin's MCP server under the real Claude Code CLI: registered in plugin.json, launched
through the same launcher as the hooks, and called by a tool_use the fake upstream scripts."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.support.claude_code import Workspace, run_claude_session
from tests.support.fake_anthropic import Turn
from tests.support.gateway import free_port
from tests.test_plugin import (  # noqa: F401  stop_gateway: a fixture
    BARE_PATH,
    ROOT,
    checkout,
    install_binary,
    install_plugin,
    needs_cli,
    stop_gateway,
)

# Claude Code names a plugin's MCP tools mcp__plugin_<plugin>_<server>__<tool>.
TOOL = "mcp__plugin_opik-cipx_opik-cipx__session_cost"


def test_the_plugin_registers_the_mcp_server_through_the_launcher() -> None:
    manifest = json.loads((ROOT / ".claude-plugin" / "plugin.json").read_text())
    assert manifest["mcpServers"] == {
        "opik-cipx": {"command": "${CLAUDE_PLUGIN_ROOT}/plugin/cipx-launch", "args": ["mcp", "serve"]}}
    hooks = json.loads((ROOT / "hooks" / "hooks.json").read_text())["hooks"]
    commands = [h["command"] for groups in hooks.values() for g in groups for h in g["hooks"]]
    # The same launcher the hooks use: one place that finds the binary.
    assert commands and all(c.startswith('"${CLAUDE_PLUGIN_ROOT}/plugin/cipx-launch" ') for c in commands)


def _tool_result(body: dict[str, Any]) -> str:
    """The text of the last tool_result block Claude Code sent back."""
    for message in reversed(body["messages"]):
        content = message.get("content")
        if message["role"] != "user" or not isinstance(content, list):
            continue
        for block in content:
            if block.get("type") == "tool_result":
                inner = block["content"]
                return inner if isinstance(inner, str) else "".join(b.get("text", "") for b in inner)
    raise AssertionError("no tool_result in the request")


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
@pytest.mark.usefixtures("stop_gateway")
def test_claude_calls_session_cost_and_gets_what_stats_by_session_reports(tmp_path: Path, isolated_home: Path) -> None:
    ws = Workspace.create(tmp_path, allow=["Bash", TOOL])
    install_plugin(ws.home, checkout(tmp_path / "repo"))
    binary = shlex.quote(str(install_binary(ws.home)))
    port = free_port()
    result = run_claude_session(
        ws,
        [["-p", "hello", "--output-format", "json"],
         ["--continue", "-p", "what did this session cost?", "--output-format", "json"]],
        script=[Turn(text="hello from the fake"), Turn(tool_uses=[(TOOL, {})]), Turn(text="that is what it cost")],
        # The SessionStart hook brings the gateway up; ANTHROPIC_BASE_URL points at its port.
        middle=f'export CIPX_UPSTREAM_URL="$UPSTREAM_URL"; echo http://127.0.0.1:{port} > "$MIDDLE_URL_FILE"',
        extra_env={"CIPX_PORT": str(port), "PATH": BARE_PATH},
        after=f"{binary} stats --by session --json; {binary} explain --last 1 --json; {binary} stop",
    )
    first, second = result.calls
    assert first.rc == 0 and second.rc == 0, first.stderr + second.stderr + result.upstream_log
    sid = second.json()["session_id"]
    assert second.json()["result"] == "that is what it cost", second.stdout
    posts = result.messages_requests()
    asked = next(i for i, r in enumerate(posts) if TOOL.encode() in r.body and b"tool_result" in r.body)
    shown = _tool_result(json.loads(posts[asked].body))
    # Claude Code hands the model the tool's structured content: the JSON, exact to the last digit.
    got = json.loads(shown)
    assert got["session_id"] == sid and first.json()["session_id"] == sid, shown

    decoder = json.JSONDecoder()
    report, end = decoder.raw_decode(result.after_output)
    newest, _ = decoder.raw_decode(result.after_output[end:].lstrip())
    (want,) = [g for g in report["groups"] if g["key"] == sid]
    # The answer covers every call of the session up to the one that asked for the tool; the
    # call that carried the tool_result back came after it.
    (last,) = newest
    assert last["session_id"] == sid and posts[-1] is posts[asked]
    assert got["calls"] == want["calls"] - 1 >= 2  # the first invocation's call and the one that asked
    assert got["cost_usd"] == pytest.approx(want["cost_usd"] - last["cost_usd"], abs=1e-9)
    for key, usage_key in (("output_tokens", "output_tokens"), ("cache_read_tokens", "cache_read_input_tokens"),
                           ("cache_write_tokens", "cache_creation_input_tokens"), ("input_tokens", "input_tokens")):
        assert got[key] == want[key] - last["usage"][usage_key], key
    assert got["capture_settled"] is True and got["by_category"], got

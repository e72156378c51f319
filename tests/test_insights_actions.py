"""The settings insights suggests, checked against the real Claude Code CLI.

An action is only suggested where removing the bytes is shown here: the same
`claude -p` in the recording project (tests/support/cc_project.py), with and
without the setting, and the captured requests compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.report import insights
from tests.support.cc_project import MCP_SERVER, build_project
from tests.support.claude_code import claude_bin, claude_missing_reason, run_claude_session
from tests.support.fake_anthropic import Turn

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(claude_bin() is None, reason=claude_missing_reason()),
]
INSTRUCTIONS = "MARKER_MCP_INSTRUCTIONS_7f3a"


def _first_request(tmp_path: Path, settings: dict[str, Any]) -> tuple[set[str], str]:
    """Tool names and body of the first request of `claude -p hi` with ``settings`` merged in."""
    ws = build_project(tmp_path)
    path = ws.home / ".claude" / "settings.json"
    merged = json.loads(path.read_text())
    deny = settings.get("permissions", {}).get("deny")
    if deny:
        merged["permissions"]["deny"] = deny
    merged.update({k: v for k, v in settings.items() if k != "permissions"})
    path.write_text(json.dumps(merged))
    result = run_claude_session(ws, [["-p", "hi", "--model", "claude-haiku-4-5-20251001"]], script=[Turn(text="ok")])
    assert result.calls[0].rc == 0, result.calls[0].stderr + result.upstream_log
    body = result.messages_requests()[0].body.decode()
    return {t["name"] for t in json.loads(body).get("tools", [])}, body


def test_disabled_mcpjson_servers_removes_an_mcp_servers_tools_and_instructions(tmp_path: Path) -> None:
    prefix = f"mcp__{MCP_SERVER}__"
    with_server, body = _first_request(tmp_path / "with", {})
    assert any(n.startswith(prefix) for n in with_server) and INSTRUCTIONS in body
    action = insights.mcp_action(MCP_SERVER)
    setting = json.loads("{" + action.split("{", 1)[1].rsplit("}", 1)[0] + "}")  # the setting the action names
    without, body = _first_request(tmp_path / "without", setting)
    assert not any(n.startswith(prefix) for n in without) and INSTRUCTIONS not in body
    assert without == {n for n in with_server if not n.startswith(prefix)}  # nothing else lost


def test_a_deny_rule_keeps_an_mcp_servers_instructions(tmp_path: Path) -> None:
    """Why the MCP action is not a deny rule: the tools go, the instructions stay."""
    without, body = _first_request(tmp_path, {"permissions": {"deny": [f"mcp__{MCP_SERVER}"]}})
    assert not any(n.startswith(f"mcp__{MCP_SERVER}__") for n in without)
    assert INSTRUCTIONS in body


def test_a_deny_rule_removes_a_builtin_tools_schema(tmp_path: Path) -> None:
    with_tools, _ = _first_request(tmp_path / "with", {})
    assert {"WebFetch", "CronCreate"} <= with_tools
    setting = json.loads("{" + insights.builtin_action("WebFetch").split("{", 1)[1].rsplit("}", 1)[0] + "}")
    without, _ = _first_request(tmp_path / "without", setting)
    assert with_tools - without == {"WebFetch"}

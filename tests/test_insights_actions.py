"""The settings insights suggests, checked against the real Claude Code CLI.

An action is only suggested where removing the bytes is shown here: the same
`claude -p` in the recording project (tests/support/cc_project.py), with and
without the setting, and the captured requests compared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.report import recommend as insights
from opik_cipx.report import recommend_context
from tests.support.cc_project import AGENT, COMMAND, COMPACT_PROMPT, MCP_SERVER, SKILL, build_project
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


def _front_matter_off(ws_root: Path, rel: str) -> None:
    """What the skill and command actions say: ``disable-model-invocation: true`` in the front matter."""
    (path,) = [p for p in ws_root.rglob(Path(rel).name) if str(p).endswith(rel)]
    path.write_text(path.read_text().replace("---\n", "---\ndisable-model-invocation: true\n", 1))


def _listed(body: str, name: str, marker: str) -> bool:
    return f"- {name}: " in body and marker in body


def test_an_agent_deny_rule_takes_the_agent_out_of_the_listing(tmp_path: Path) -> None:
    _, body = _first_request(tmp_path / "with", {})
    assert _listed(body, AGENT, "MARKER_AGENT_DESC_7f3a")
    action = insights.agent_action(AGENT)
    setting = json.loads("{" + action.split("{", 1)[1].rsplit("}", 1)[0] + "}")
    tools, body = _first_request(tmp_path / "without", setting)
    assert not _listed(body, AGENT, "MARKER_AGENT_DESC_7f3a") and "Agent" in tools  # the other agents stay


@pytest.mark.parametrize(("kind", "name", "marker"), [("skill", SKILL, "MARKER_SKILL_DESC_7f3a"),
                                                      ("command", COMMAND, "MARKER_CMD_DESC_7f3a")])
def test_disable_model_invocation_takes_a_skill_or_command_out_of_the_listing(
        tmp_path: Path, kind: str, name: str, marker: str) -> None:
    action = insights.skill_action(name) if kind == "skill" else insights.command_action(name)
    assert "disable-model-invocation: true" in action
    rel = action.split("front matter of ", 1)[1].split(" ", 1)[0]  # the file the action names
    ws = build_project(tmp_path / "without")
    _front_matter_off(ws.root, rel)
    result = run_claude_session(ws, [["-p", "hi", "--model", "claude-haiku-4-5-20251001"]], script=[Turn(text="ok")])
    body = result.messages_requests()[0].body.decode()
    assert not _listed(body, name, marker)
    other = "MARKER_CMD_DESC_7f3a" if kind == "skill" else "MARKER_SKILL_DESC_7f3a"
    assert other in body  # only the one named


def test_a_skill_deny_rule_does_not_remove_its_listing(tmp_path: Path) -> None:
    """Why the skill action is front matter, not a deny rule."""
    _, body = _first_request(tmp_path, {"permissions": {"deny": [f"Skill({SKILL})"]}})
    assert _listed(body, SKILL, "MARKER_SKILL_DESC_7f3a")


def test_the_one_hour_ttl_setting_makes_cache_breakpoints_one_hour(tmp_path: Path) -> None:
    _, body = _first_request(tmp_path / "with", {})
    assert '"cache_control":{"type":"ephemeral"}' in body and '"ttl":"1h"' not in body
    _, body = _first_request(tmp_path / "without", json.loads(recommend_context.TTL_1H_SETTING))
    marks = re.findall(r'"cache_control":\{[^}]*\}', body)
    assert marks and all('"ttl":"1h"' in m for m in marks)


def test_auto_compact_window_compacts_before_the_long_context_threshold(tmp_path: Path) -> None:
    """A 1M-context model reporting 186k prompt tokens: with the setting the CLI compacts first."""
    big = {"input_tokens": 3, "cache_read_input_tokens": 185_000, "cache_creation_input_tokens": 1_000,
           "output_tokens": 50}
    script = [Turn(text="", tool_uses=[("Bash", {"command": "echo hi", "description": "x"})], usage=big),
              Turn(text="", tool_uses=[("Bash", {"command": "echo ho", "description": "x"})], usage=big),
              Turn(text="summary"), Turn(text="done"), Turn(text="done")]
    seen = {}
    for label, settings in (("with", {}), ("without", json.loads(recommend_context.COMPACT_SETTING))):
        ws = build_project(tmp_path / label)
        path = ws.home / ".claude" / "settings.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
        result = run_claude_session(ws, [["-p", "hi", "--model", "claude-sonnet-4-5-20250929[1m]"]], script=script)
        assert result.calls[0].rc == 0, result.calls[0].stderr + result.upstream_log
        seen[label] = [COMPACT_PROMPT in r.body.decode() for r in result.messages_requests()]
    assert not any(seen["with"]) and any(seen["without"])

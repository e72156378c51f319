"""A Claude Code project that exercises every context source, and the recorder for its requests.

``python -m tests.support.cc_project --record OUTDIR`` runs one scripted session per model family
(Opus, Sonnet, Haiku) with the real CLI in a loopback-only namespace against the fake upstream and
writes every ``/v1/messages`` request as ``OUTDIR/<scenario>/<NN>-<label>.json`` (the raw body,
byte for byte) plus ``<NN>-<label>.meta.json`` (headers without auth, path, and the planted
markers found in the body, with byte offsets and the category each belongs to).

Each context source carries a unique marker, so an attribution golden can say "the bytes around
MARKER_SKILL_BODY_7f3a belong to skills" without knowing Claude Code's layout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.claude_code import (
    REPO_ROOT,
    SessionResult,
    Workspace,
    claude_bin,
    claude_missing_reason,
    run_claude_session,
)
from tests.support.fake_anthropic import RecordedRequest, Rule, Rules, Turn

SUFFIX = "7f3a"


def _m(name: str) -> str:
    return f"MARKER_{name}_{SUFFIX}"


# marker -> attribution category it belongs to wherever it appears.
MARKERS: dict[str, str] = {
    _m("USER_CLAUDEMD"): "memory",
    _m("PROJECT_CLAUDEMD"): "memory",
    _m("SKILL_DESC"): "skills",
    _m("SKILL_BODY"): "skills",
    _m("AGENT_DESC"): "agents",
    _m("AGENT_PROMPT"): "agents",
    _m("SUBAGENT_ANSWER"): "agents",
    _m("MCP_INSTRUCTIONS"): "mcp",
    _m("MCP_TOOL_DESC"): "mcp",
    _m("MCP_RESULT"): "mcp",
    _m("CMD_DESC"): "slash_commands",
    _m("CMD_BODY"): "slash_commands",
    _m("CMD_ARGS"): "slash_commands",
    _m("HOOK_OUT"): "hooks",
    _m("USER_PROMPT"): "user_prompt",
    _m("USER_PROMPT2"): "user_prompt",
    _m("BASH_OUT"): "tool_io",
    _m("SUBAGENT_BASH_OUT"): "tool_io",
    _m("ASSISTANT_TEXT"): "assistant",
    _m("THINKING"): "assistant",
    _m("CMD_REPLY"): "assistant",
    _m("COMPACT_SUMMARY"): "compaction",
}

SKILL = "acme-skill"
AGENT = "acme-reviewer"
COMMAND = "acme-cmd"
MCP_SERVER = "acme_tools"
COMPACT_PROMPT = "CRITICAL: Respond with TEXT ONLY"

# The sections (hook output, agents, MCP instructions, skills) travel as a mid-conversation
# `role: "system"` message only on models that get the mid-conversation-system beta (the CLI's
# default, claude-opus-4-8, in 2.1.197); the others carry them as <system-reminder> blocks.
MODELS: dict[str, str] = {
    "opus48": "claude-opus-4-8",
    "opus": "claude-opus-4-6",
    "sonnet": "claude-sonnet-4-5-20250929",
    "haiku": "claude-haiku-4-5-20251001",
}


def _printf(marker_name: str) -> str:
    # The command text must not contain the marker itself, so only the tool output carries it.
    head, _, tail = _m(marker_name).rpartition("_")
    prefix, _, word = head.partition("_")  # "MARKER", "BASH_OUT"
    return f"printf '{prefix}_%s_{tail}\\n' {word}"


def build_project(root: Path) -> Workspace:
    """Write HOME and project files: CLAUDE.md twice, skill, agent, command, MCP server, hook."""
    ws = Workspace.create(
        root,
        allow=["Bash", "Skill", "Agent", "Read", f"mcp__{MCP_SERVER}"],
        settings={
            "hooks": {
                "SessionStart": [
                    {"matcher": "startup|resume|clear|compact", "hooks": [{"type": "command", "command": f"echo 'session context: {_m('HOOK_OUT')}'"}]}
                ]
            }
        },
    )
    ws.write(".claude/CLAUDE.md", f"# User preferences\nPrefer short answers. {_m('USER_CLAUDEMD')}\n", base="home")
    ws.write("CLAUDE.md", f"# Acme warehouse project\nStock lives in the acme_tools MCP server. {_m('PROJECT_CLAUDEMD')}\n")
    ws.write(
        f".claude/skills/{SKILL}/SKILL.md",
        f"---\nname: {SKILL}\ndescription: Formats inventory reports for the acme warehouse. {_m('SKILL_DESC')}\n---\n\n"
        f"# Acme report format\n\nWrite reports as a table of item, stock and aisle. {_m('SKILL_BODY')}\n",
    )
    ws.write(
        f".claude/agents/{AGENT}.md",
        f"---\nname: {AGENT}\ndescription: Reviews inventory records for mistakes. {_m('AGENT_DESC')}\ntools: Bash\n---\n\n"
        f"You are the acme reviewer. Check each record and report problems briefly. {_m('AGENT_PROMPT')}\n",
    )
    ws.write(
        f".claude/commands/{COMMAND}.md",
        f"---\ndescription: Summarise stock for an item. {_m('CMD_DESC')}\n---\n\n"
        f"Summarise the stock for $ARGUMENTS using the acme tools. {_m('CMD_BODY')}\n",
    )
    server = REPO_ROOT / "tests" / "fixtures" / "mcp_server.py"
    mcp = {
        "mcpServers": {
            MCP_SERVER: {
                "command": sys.executable,
                "args": [
                    str(server),
                    "--instructions-marker",
                    _m("MCP_INSTRUCTIONS"),
                    "--desc-marker",
                    _m("MCP_TOOL_DESC"),
                    "--result-marker",
                    _m("MCP_RESULT"),
                ],
            }
        }
    }
    ws.write(".mcp.json", json.dumps(mcp, indent=2))
    return ws


def recording_rules() -> Rules:
    """The upstream's side of the session: each step keyed on the previous tool's result."""
    agent_header = "x-claude-code-agent-id"
    return Rules(
        [
            Rule(
                when={"body_contains": COMPACT_PROMPT},
                turn=Turn(text=f"<analysis>checked stock</analysis>\n<summary>Widget stock is 42 in aisle 7. {_m('COMPACT_SUMMARY')}</summary>"),
            ),
            Rule(when={"has_header": agent_header, "last_user_contains": _m("SUBAGENT_BASH_OUT")}, turn=Turn(text=f"Records look fine. {_m('SUBAGENT_ANSWER')}")),
            Rule(
                when={"has_header": agent_header, "has_tools": True},
                turn=Turn(text="", tool_uses=[("Bash", {"command": _printf("SUBAGENT_BASH_OUT"), "description": "Check records"})]),
            ),
            Rule(
                when={"last_user_contains": _m("MCP_RESULT")},
                turn=Turn(text="", tool_uses=[("Bash", {"command": _printf("BASH_OUT"), "description": "Print a marker"})]),
            ),
            Rule(when={"last_user_contains": _m("BASH_OUT")}, turn=Turn(text="", tool_uses=[("Skill", {"skill": SKILL})])),
            Rule(
                when={"last_user_contains": _m("SKILL_BODY")},
                turn=Turn(text="", tool_uses=[("Agent", {"description": "Review records", "prompt": "Review the widget record.", "subagent_type": AGENT})]),
            ),
            Rule(when={"last_user_contains": _m("SUBAGENT_ANSWER")}, turn=Turn(text=f"Widget: 42 in aisle 7. {_m('ASSISTANT_TEXT')}")),
            Rule(
                when={"last_user_contains": _m("USER_PROMPT"), "tool_results": 0},
                turn=Turn(
                    thinking=f"I should look the item up first. {_m('THINKING')}",
                    text="",
                    tool_uses=[(f"mcp__{MCP_SERVER}__lookup_item", {"item": "widget"})],
                ),
            ),
            Rule(when={"last_user_contains": _m("CMD_BODY")}, turn=Turn(text=f"Stock summary: 42. {_m('CMD_REPLY')}")),
        ]
    )


def label(request: RecordedRequest) -> str:
    """What a recorded request is for, by the same cues the rules use."""
    if request.route == "/v1/messages/count_tokens":
        return "count-tokens"
    try:
        body = request.json()
    except ValueError:
        return "unparsable"
    last_user = ""
    tool_results = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            tool_results += sum(1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result")
        if message.get("role") == "user":
            last_user = json.dumps(message, ensure_ascii=False)
    if COMPACT_PROMPT.encode() in request.body:
        return "compact"
    if "x-claude-code-agent-id" in request.headers:
        return "subagent-after-bash" if _m("SUBAGENT_BASH_OUT") in last_user else "subagent-start"
    for marker, name in (
        ("MCP_RESULT", "after-mcp"),
        ("BASH_OUT", "after-bash"),
        ("SKILL_BODY", "after-skill"),
        ("SUBAGENT_ANSWER", "after-agent"),
        ("USER_PROMPT2", "after-compact"),
        ("USER_PROMPT", "prompt"),
        ("CMD_BODY", "slash-command"),
    ):
        if _m(marker) in last_user:
            return name
    return "other"


# Markers a request with that label must contain; the recorder refuses to write a set that
# lacks one, so the fixtures' claims are checked against the real CLI at record time.
_SESSION_CONTEXT = ["USER_CLAUDEMD", "PROJECT_CLAUDEMD", "HOOK_OUT", "AGENT_DESC", "MCP_INSTRUCTIONS", "MCP_TOOL_DESC", "SKILL_DESC", "CMD_DESC"]
EXPECTED: dict[str, list[str]] = {
    "prompt": _SESSION_CONTEXT + ["USER_PROMPT"],
    "after-mcp": _SESSION_CONTEXT + ["USER_PROMPT", "MCP_RESULT"],
    "after-bash": _SESSION_CONTEXT + ["USER_PROMPT", "MCP_RESULT", "BASH_OUT"],
    "after-skill": _SESSION_CONTEXT + ["USER_PROMPT", "MCP_RESULT", "BASH_OUT", "SKILL_BODY"],
    "after-agent": _SESSION_CONTEXT + ["USER_PROMPT", "MCP_RESULT", "BASH_OUT", "SKILL_BODY", "SUBAGENT_ANSWER"],
    "slash-command": _SESSION_CONTEXT + ["USER_PROMPT", "ASSISTANT_TEXT", "CMD_BODY", "CMD_ARGS"],
    "compact": ["USER_PROMPT", "MCP_RESULT", "BASH_OUT", "SKILL_BODY", "SUBAGENT_ANSWER", "CMD_BODY"],
    "after-compact": ["COMPACT_SUMMARY", "USER_PROMPT2"],
    "subagent-start": ["AGENT_PROMPT"],
    "subagent-after-bash": ["AGENT_PROMPT", "SUBAGENT_BASH_OUT"],
}


def session_calls(model: str) -> list[list[str]]:
    common = ["--model", model, "--output-format", "json"]
    return [
        ["-p", f"{_m('USER_PROMPT')} Check the widget stock, review it, then report.", *common],
        ["--continue", "-p", f"/{COMMAND} {_m('CMD_ARGS')}", *common],
        ["--continue", "-p", "/compact", *common],
        ["--continue", "-p", f"{_m('USER_PROMPT2')} Anything else?", *common],
    ]


def markers_in(body: bytes) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for marker, category in MARKERS.items():
        needle = marker.encode()
        offsets = []
        start = body.find(needle)
        while start != -1:
            offsets.append(start)
            start = body.find(needle, start + 1)
        if offsets:
            found[marker] = {"category": category, "offsets": offsets}
    return found


_SECRET_HEADERS = {"x-api-key", "authorization", "proxy-authorization", "cookie"}


@dataclass
class SavedRequest:
    name: str
    label: str
    size: int


def save_scenario(result: SessionResult, scenario: str, model: str, outdir: Path) -> list[SavedRequest]:
    """Write the scenario's requests; byte-identical repeats (retries) are written once."""
    target = outdir / scenario
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    saved: list[SavedRequest] = []
    seen: set[bytes] = set()
    problems: list[str] = []
    for request in result.requests:
        if request.method != "POST" or not request.route.startswith("/v1/messages"):
            continue
        if request.body in seen:
            continue
        seen.add(request.body)
        name = label(request)
        stem = f"{len(saved):02d}-{name}"
        found = markers_in(request.body)
        expected = [_m(n) for n in EXPECTED.get(name, [])]
        missing = [m for m in expected if m not in found]
        if missing:
            problems.append(f"{scenario}/{stem}: missing {missing}")
        (target / f"{stem}.json").write_bytes(request.body)
        meta = {
            "scenario": scenario,
            "model": model,
            "label": name,
            "method": request.method,
            "path": request.path,
            "headers": [[k, v] for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS],
            "session_id": request.headers.get("X-Claude-Code-Session-Id"),
            "agent_id": request.headers.get("x-claude-code-agent-id"),
            "expected_markers": expected,
            "markers": found,
            "response_status": request.status,
        }
        (target / f"{stem}.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        saved.append(SavedRequest(stem, name, len(request.body)))
    if problems:
        raise RuntimeError("recorded requests lack expected markers:\n" + "\n".join(problems))
    return saved


def record(outdir: Path, scenarios: Sequence[str] = tuple(MODELS), work_root: Path | None = None) -> dict[str, Any]:
    """Run each scenario against the real CLI and write its fixtures; returns the index written."""
    if claude_bin() is None:
        raise SystemExit(claude_missing_reason())
    base = work_root or Path("/tmp/cipx-cc-record")
    index_path = outdir / "index.json"
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {"claude_version": None, "scenarios": {}}
    for scenario in scenarios:
        model = MODELS[scenario]
        root = base / scenario
        if root.exists():
            shutil.rmtree(root)
        ws = build_project(root)
        result = run_claude_session(ws, session_calls(model), script=recording_rules())
        failed = [c for c in result.calls if c.rc != 0]
        if failed:
            raise RuntimeError(f"{scenario}: claude failed: {failed[0].argv}\n{failed[0].stderr}\n{result.upstream_log}")
        saved = save_scenario(result, scenario, model, outdir)
        agents = {r.headers.get("User-Agent", "") for r in result.requests if r.method == "POST"}
        index["claude_version"] = next(iter(sorted(agents)), "")
        index["scenarios"][scenario] = {
            "model": model,
            "calls": [c.argv[1:] for c in result.calls],
            "requests": [{"file": f"{s.name}.json", "label": s.label, "bytes": s.size} for s in saved],
        }
    index["scenarios"] = dict(sorted(index["scenarios"].items()))
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    return index


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.cc_project", description=__doc__)
    parser.add_argument("--record", metavar="OUTDIR", required=True, help="write fixtures here (e.g. tests/fixtures/claude_code)")
    parser.add_argument("--scenario", action="append", choices=sorted(MODELS), help="record only these (repeatable)")
    parser.add_argument("--work", help="scratch directory for HOME/project (default /tmp/cipx-cc-record)")
    args = parser.parse_args(argv)
    outdir = Path(args.record)
    outdir.mkdir(parents=True, exist_ok=True)
    index = record(outdir, args.scenario or tuple(MODELS), Path(args.work) if args.work else None)
    for scenario, info in index["scenarios"].items():
        print(f"{scenario}: {len(info['requests'])} requests -> {outdir / scenario}")


if __name__ == "__main__":
    main()

"""Claude Code request bodies for attribution tests, built from the wire facts.

``cc_body`` is shaped like a Claude Code 2.1.197 ``/v1/messages`` request and plants a marker
in every context source; ``MARKERS`` says which category and item each marker belongs to.
"""

from __future__ import annotations

import json
from typing import Any

EPHEMERAL = {"type": "ephemeral"}
USER_MD = "# Personal rules\nAlways answer in English. MARK_USER_MD \"quoted\" café 🎉\n"
PROJECT_MD = "# Project\nRun `make test`. MARK_PROJECT_MD\n\n## Style\ntabs\n"


def tool_def(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": {"q": {"type": "string", "description": "query"}}, "required": ["q"]},
    }


def context_reminder() -> str:
    return (
        "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
        "# claudeMd\nCodebase and user instructions are shown below. Be sure to adhere to these instructions.\n\n"
        "Contents of /home/u/.claude/CLAUDE.md (user's private global instructions for all projects):\n\n"
        f"{USER_MD}\n"
        "Contents of /work/proj/CLAUDE.md (project instructions, checked into the codebase):\n\n"
        f"{PROJECT_MD}\n"
        "# currentDate\nToday's date is 2026-11-22.\n\n"
        "      IMPORTANT: this context may or may not be relevant to your tasks. You should not respond to this "
        "context unless it is highly relevant to your task.\n</system-reminder>\n"
    )


SYSTEM_SECTIONS = [
    "SessionStart:startup hook success: MARK_SESSION_HOOK printed by a hook",
    "Available agent types for the Agent tool:\n- general-purpose: General agent (Tools: *)\n"
    "- reviewer: MARK_AGENT_LISTING reviews diffs (Tools: Read, Grep)",
    "# MCP Server Instructions\n\nThe following MCP servers have provided instructions for how to use their tools "
    "and resources:\n\n## acme_tools\nMARK_MCP_INSTRUCTIONS use search first.\n\n## plugin_demo_my_srv\nLook things up.",
    "The following skills are available for use with the Skill tool:\n\n- deploy: MARK_SKILL_LISTING ships it\n"
    "- review: custom command",
    "UserPromptSubmit hook success: MARK_PROMPT_HOOK",
]


def cc_body(
    *,
    placement: str = "system_message",
    subagent_billing: bool = False,
    compaction: bool = False,
    order: str = "role-first",
    system_prompt: str = "You are an interactive CLI tool.\nMARK_MAIN_PROMPT\n" + "Follow the rules. " * 40,
) -> bytes:
    """A request shaped like Claude Code 2.1.197's, with a marker planted in every source."""
    first: list[dict[str, Any]] = [{"type": "text", "text": context_reminder()}]
    if placement == "reminders":
        first += [{"type": "text", "text": f"<system-reminder>\n{s}\n</system-reminder>"} for s in SYSTEM_SECTIONS]
    first.append({"type": "text", "text": "Fix the flaky test MARK_PROMPT_ONE please"})
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    if placement == "system_message":
        messages.append({"role": "system", "content": "\n\n".join(SYSTEM_SECTIONS)})
    messages += [
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "MARK_THINKING let me look", "signature": "c2lnbmF0dXJl"},
                {"type": "text", "text": "I'll run it. MARK_ASSISTANT_TEXT"},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "echo MARK_BASH_IN"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "MARK_BASH_OUT\nok", "is_error": False}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_2", "name": "mcp__acme_tools__search", "input": {"q": "MARK_MCPCALL_IN"}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [
                        {"type": "text", "text": "MARK_MCP_OUT result"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoMARKIMAGE"}},
                    ],
                }
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "Skill", "input": {"skill": "deploy"}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_3", "content": "Launching skill: deploy"},
                {"type": "text", "text": "Base directory for this skill: /work/proj/.claude/skills/deploy\n\nMARK_SKILL_BODY steps"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Deployed."}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "<command-message>review is running…</command-message>\n<command-name>/review</command-name>\n"
                    "<command-args>MARK_COMMAND_ARGS</command-args>",
                },
                {"type": "text", "text": "Review the diff carefully. MARK_COMMAND_BODY"},
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_4", "name": "Agent", "input": {"subagent_type": "reviewer", "prompt": "MARK_AGENT_IN"}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_4", "content": [{"type": "text", "text": "MARK_AGENT_OUT looks fine"}, {"type": "text", "text": "agentId: a1b2c3 (usage: 1234 tokens)"}]},
                {"type": "text", "text": "<local-command-stdout>MARK_LOCAL_STDOUT</local-command-stdout>"},
                {"type": "text", "text": "Now ship it MARK_PROMPT_TWO", "cache_control": EPHEMERAL},
            ],
        },
    ]
    if compaction:
        messages[-1]["content"].append({"type": "text", "text": "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools. MARK_COMPACT_INSTRUCTION"})
    if order == "content-first":
        messages = [{"content": m["content"], "role": m["role"]} for m in messages]
    billing = "x-anthropic-billing-header: cc_version=2.1.197.abc; cc_entrypoint=cli;"
    if subagent_billing:
        billing += " cc_is_subagent=true;"
    body = {
        "model": "claude-opus-4-6",
        "messages": messages,
        "system": [
            {"type": "text", "text": billing},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": EPHEMERAL},
            {"type": "text", "text": system_prompt, "cache_control": EPHEMERAL},
        ],
        "tools": [
            tool_def("Agent", "Launch a new agent MARK_TOOL_AGENT"),
            tool_def("Bash", "Run a command MARK_TOOL_BASH"),
            tool_def("Skill", "Run a skill"),
            tool_def("mcp__acme_tools__fetch", "Fetch a thing"),
            tool_def("mcp__acme_tools__search", "Search MARK_MCP_TOOL"),
            tool_def("mcp__plugin_demo_my_srv__lookup", "Look up MARK_PLUGIN_TOOL"),
        ],
        "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s-1"})},
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": []},
        "output_config": {"effort": "high"},
        "stream": True,
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


# Where cc_body's planted markers must be attributed: (category, item).
MARKERS: dict[str, tuple[str, str]] = {
    "MARK_USER_MD": ("memory", "/home/u/.claude/CLAUDE.md"),
    "MARK_PROJECT_MD": ("memory", "/work/proj/CLAUDE.md"),
    "2026-11-22": ("reminders", "currentDate"),
    "MARK_PROMPT_ONE": ("user_prompt", "#1"),
    "MARK_SESSION_HOOK": ("hooks", "SessionStart"),
    "MARK_AGENT_LISTING": ("agents", "listing:reviewer"),
    "MARK_MCP_INSTRUCTIONS": ("mcp", "acme_tools/instructions"),
    "Look things up": ("mcp", "plugin_demo_my_srv/instructions"),
    "MARK_SKILL_LISTING": ("skills", "listing:deploy"),
    "MARK_PROMPT_HOOK": ("hooks", "UserPromptSubmit"),
    "MARK_THINKING": ("assistant", "thinking"),
    "c2lnbmF0dXJl": ("assistant", "thinking"),
    "MARK_ASSISTANT_TEXT": ("assistant", "text"),
    "MARK_BASH_IN": ("tool_io", "Bash"),
    "MARK_BASH_OUT": ("tool_io", "Bash"),
    "MARK_MCPCALL_IN": ("mcp", "acme_tools/io:search"),
    "MARK_MCP_OUT": ("mcp", "acme_tools/io:search"),
    "MARKIMAGE": ("media", "image:image/png"),
    "Launching skill": ("tool_io", "Skill"),
    "MARK_SKILL_BODY": ("skills", "deploy"),
    "MARK_COMMAND_ARGS": ("slash_commands", "review"),
    "MARK_COMMAND_BODY": ("slash_commands", "review"),
    # A subagent's brief and answer are the custom agent's cost (agents), not a tool's.
    "MARK_AGENT_IN": ("agents", "reviewer/io"),
    "MARK_AGENT_OUT": ("agents", "reviewer/io"),
    "agentId: a1b2c3": ("agents", "reviewer/io"),
    "MARK_LOCAL_STDOUT": ("slash_commands", "review"),
    "MARK_PROMPT_TWO": ("user_prompt", "#2"),
    "MARK_MAIN_PROMPT": ("system", "main prompt"),
    "Anthropic's official CLI": ("system", "identity"),
    "cc_entrypoint": ("system", "billing"),
    "MARK_TOOL_AGENT": ("builtin_tools", "Agent"),
    "MARK_TOOL_BASH": ("builtin_tools", "Bash"),
    "MARK_MCP_TOOL": ("mcp", "acme_tools/tool:search"),
    "MARK_PLUGIN_TOOL": ("mcp", "plugin_demo_my_srv/tool:lookup"),
    '"claude-opus-4-6"': ("framing", "model"),
    "device_id": ("framing", "metadata"),
    "budget_tokens": ("framing", "thinking"),
}

"""Golden tests over requests recorded from the real Claude Code CLI (tests/fixtures/claude_code).

Each recording plants one marker per context source; the sidecar says which
category the marker's source belongs to. Offsets are read from the sidecars,
never copied by hand, so a re-recording keeps these tests meaningful.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.attribute import Attribution, allocate, attribute_request
from opik_cipx.model import Usage
from tests.support.attribution import FakeRates, assert_partition

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
RECORDINGS = sorted(p for p in FIXTURES.glob("*/*.json") if not p.name.endswith(".meta.json"))
# The recording project defines .claude/commands/acme-cmd.md. The gateway learns a
# project's command names from its directory (the SessionStart hook gives the cwd);
# nothing in the body tells a command's listing line from a skill's until it is used.
PROJECT_COMMANDS = ("acme-cmd",)


def _load(path: Path) -> tuple[bytes, dict[str, Any], Attribution]:
    body = path.read_bytes()
    meta = json.loads(path.with_name(path.stem + ".meta.json").read_text())
    attr = attribute_request(body, headers=dict(meta["headers"]), path=meta["path"], commands=PROJECT_COMMANDS)
    return body, meta, attr


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.stem}" for p in paths]


# Where each marker must land, down to the item. A callable checks items that carry
# recording-specific paths.
ITEMS: dict[str, Any] = {
    "MARKER_USER_CLAUDEMD_7f3a": lambda item: item.endswith("/home/.claude/CLAUDE.md"),
    "MARKER_PROJECT_CLAUDEMD_7f3a": lambda item: item.endswith("/project/CLAUDE.md"),
    "MARKER_SKILL_DESC_7f3a": "listing:acme-skill",
    "MARKER_SKILL_BODY_7f3a": "acme-skill",
    "MARKER_AGENT_DESC_7f3a": "listing:acme-reviewer",
    "MARKER_AGENT_PROMPT_7f3a": "agent prompt",
    "MARKER_SUBAGENT_ANSWER_7f3a": "acme-reviewer/io",
    "MARKER_MCP_INSTRUCTIONS_7f3a": "acme_tools/instructions",
    "MARKER_MCP_TOOL_DESC_7f3a": "acme_tools/tool:lookup_item",
    "MARKER_MCP_RESULT_7f3a": "acme_tools/io:lookup_item",
    "MARKER_CMD_DESC_7f3a": "listing:acme-cmd",
    "MARKER_CMD_BODY_7f3a": "acme-cmd",
    "MARKER_CMD_ARGS_7f3a": "acme-cmd",
    "MARKER_HOOK_OUT_7f3a": "SessionStart",
    "MARKER_USER_PROMPT_7f3a": lambda item: item.startswith("#"),
    "MARKER_USER_PROMPT2_7f3a": lambda item: item.startswith("#"),
    "MARKER_BASH_OUT_7f3a": "Bash",
    "MARKER_SUBAGENT_BASH_OUT_7f3a": "Bash",
    "MARKER_THINKING_7f3a": "thinking",
    "MARKER_ASSISTANT_TEXT_7f3a": "text",
    "MARKER_CMD_REPLY_7f3a": "text",
    "MARKER_COMPACT_SUMMARY_7f3a": "summary",
}


@pytest.mark.parametrize("path", RECORDINGS, ids=_ids(RECORDINGS))
def test_recorded_markers_land_in_their_category_and_item(path: Path) -> None:
    body, meta, attr = _load(path)
    assert meta["markers"], "a recording without markers tests nothing"
    segments = list(attr.segments())
    wrong = []
    for marker, info in meta["markers"].items():
        for offset in info["offsets"]:
            assert body[offset : offset + len(marker)] == marker.encode()
            hits = {(s.category, s.item) for s in segments if s.start < offset + len(marker) and s.end > offset}
            want = ITEMS[marker]
            ok = len(hits) == 1 and next(iter(hits))[0] == info["category"]
            if ok:
                item = next(iter(hits))[1]
                ok = want(item) if callable(want) else item == want
            if not ok:
                wrong.append((marker, offset, info["category"], hits))
    assert not wrong


@pytest.mark.parametrize("path", RECORDINGS, ids=_ids(RECORDINGS))
def test_recorded_request_is_covered_exactly_once_with_at_most_half_a_percent_unattributed(path: Path) -> None:
    body, _, attr = _load(path)
    assert_partition(attr, body)
    assert attr.parse_error is None
    assert attr.unattributed_bytes <= 0.005 * len(body)


@pytest.mark.parametrize("path", RECORDINGS, ids=_ids(RECORDINGS))
def test_recorded_call_kind_and_agent_id(path: Path) -> None:
    _, meta, attr = _load(path)
    label = meta["label"]
    want = "subagent" if label.startswith("subagent") else "compaction" if label == "compact" else "main"
    assert attr.call_kind == want
    assert attr.agent_id == meta["agent_id"]


@pytest.mark.parametrize("path", RECORDINGS, ids=_ids(RECORDINGS))
def test_recorded_breakpoints_are_the_cache_control_blocks_in_api_order(path: Path) -> None:
    body, _, attr = _load(path)
    parsed = json.loads(body)
    marked_system = [i for i, b in enumerate(parsed["system"]) if "cache_control" in b]
    marked_messages = sum(
        1 for m in parsed["messages"] if isinstance(m["content"], list) for b in m["content"] if "cache_control" in b
    )
    marked_tools = sum(1 for t in parsed.get("tools", []) if "cache_control" in t)
    groups = [bp.group for bp in attr.breakpoints]
    assert groups.count(1) == len(marked_system)
    assert groups.count(2) == marked_messages
    assert groups.count(0) == marked_tools
    for bp in attr.breakpoints:  # each one closes the block that carries the marker
        assert re.search(rb'"cache_control":\{[^{}]*\}\}$', body[max(0, bp.pos - 80) : bp.pos])


@pytest.mark.parametrize("path", RECORDINGS, ids=_ids(RECORDINGS))
def test_recorded_tokens_split_exactly_at_the_breakpoints(path: Path) -> None:
    body, _, attr = _load(path)
    tools = attr.spans["tools"][1] - attr.spans["tools"][0]
    system = attr.spans["system"][1] - attr.spans["system"][0]
    # A warm cache: tools + system read, the conversation written, a few fresh tokens.
    usage = Usage(
        input_tokens=3,
        cache_read_input_tokens=(tools + system) // 4,
        cache_creation_input_tokens=(len(body) - tools - system) // 4,
        output_tokens=50,
    )
    out = allocate(attr, usage, FakeRates(), [{"type": "text", "text": "ok"}])
    assert sum(c.tokens for c in out.categories.values()) == usage.prompt_tokens
    assert sum(i.detail["tokens_split"]["cache_read"] for i in out.items) == usage.cache_read_input_tokens
    assert sum(i.detail["tokens_split"]["cache_write"] for i in out.items) == usage.cache_creation_input_tokens
    assert sum(i.tokens for i in out.output_items) == 50
    system_bps = [bp for bp in attr.breakpoints if bp.group == 1]
    assert out.cache_split["read_boundary"] == {"group": "system", "pos": max(bp.pos for bp in system_bps)}
    last = max(attr.breakpoints, key=lambda bp: (bp.group, bp.pos))
    assert out.cache_split["write_boundary"] == {"group": "messages", "pos": last.pos}
    # Everything in tools and system is billed at the cache-read rate, nothing else is.
    for item in out.items:
        if item.category in ("builtin_tools",) or (item.category == "system" and item.item != "billing"):
            assert item.detail["tokens_split"]["cache_read"] == item.tokens
        if item.category in ("user_prompt", "assistant", "tool_io"):
            assert item.detail["tokens_split"]["cache_read"] == 0


@pytest.mark.parametrize("path", [p for p in RECORDINGS if p.stem.startswith("00-")], ids=_ids([p for p in RECORDINGS if p.stem.startswith("00-")]))
def test_recorded_memory_and_prompt_details(path: Path) -> None:
    _, _, attr = _load(path)
    memory = [i for i in attr.items if i.category == "memory" and i.item.endswith("CLAUDE.md")]
    assert len(memory) == 2
    # The files tests/support/cc_project.py writes; Claude Code injects them trimmed.
    planted = {
        "/home/.claude/CLAUDE.md": "# User preferences\nPrefer short answers. MARKER_USER_CLAUDEMD_7f3a\n",
        "/project/CLAUDE.md": "# Acme warehouse project\nStock lives in the acme_tools MCP server. MARKER_PROJECT_CLAUDEMD_7f3a\n",
    }
    for item in memory:
        assert item.detail["path"] == item.item
        text = next(v for k, v in planted.items() if item.item.endswith(k))
        assert item.detail["sha256_12"] == hashlib.sha256(text.strip().encode()).hexdigest()[:12]
    prompt = [i for i in attr.items if i.category == "user_prompt"]
    assert len(prompt) == 1
    assert prompt[0].detail["text"].startswith("MARKER_USER_PROMPT_7f3a")
    assert prompt[0].detail["chars"] == len(prompt[0].detail["text"])


_TOOL_BLOCK = re.compile(r'\{"type":"tool_use","id":"([^"]+)"|\{"type":"tool_result","tool_use_id":"([^"]+)"|\{"tool_use_id":"([^"]+)","type":"tool_result"')


@pytest.mark.parametrize("path", RECORDINGS, ids=_ids(RECORDINGS))
def test_recorded_tool_use_and_result_blocks_are_wholly_the_tools_cost(path: Path) -> None:
    """Every byte of a tool_use block (type, id, name, input) and of its tool_result is that tool's bucket.

    Regression: the ``"name"`` key and the block's braces used to land in framing, so
    per-tool and per-MCP-server totals came out short.
    """
    body, _, attr = _load(path)
    text = body.decode("latin-1")  # byte offsets == char offsets; JSON structure is ASCII
    decoder = json.JSONDecoder()
    segments = list(attr.segments())
    owner: dict[str, tuple[str, str]] = {}
    checked = 0
    for m in _TOOL_BLOCK.finditer(text):
        _, end = decoder.raw_decode(text, m.start())
        hits = [(s.category, s.item) for s in segments if s.start < end and s.end > m.start()]
        assert ("framing", "structure") not in hits, (m.group(0), hits)
        if m.group(1):  # a tool call: one bucket, the tool's
            assert len(set(hits)) == 1, (m.group(0), set(hits))
            owner[m.group(1)] = hits[0]
        else:  # its result: the tool's bucket around whatever the result text carries (reminders, MCP instructions)
            tool = owner.get(m.group(2) or m.group(3))
            if tool is not None:
                ends = [(s.category, s.item) for s in segments if s.start <= m.start() < s.end or s.start < end <= s.end]
                assert set(ends) == {tool}, (m.group(0), ends)
        checked += 1
    if "tool_use" in text:
        assert checked and owner

"""A walk resumed from the previous call of the session (attribute/resume.py) equals a walk from byte 0."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.attribute import Attribution, allocate, attribute_request, profile
from opik_cipx.attribute.resume import Hint, Snapshot, WalkCache
from opik_cipx.model import Usage
from opik_cipx.pricing import PriceTable
from tests.support import long_session

CC = Path(__file__).parent / "fixtures" / "claude_code"
KEY = ("session", None)
RATES = PriceTable.builtin().rates("claude-opus-4-6", at=1_790_000_000.0, prompt_tokens=100_000)


def walk(body: bytes, cache: WalkCache | None = None, key: Any = KEY, **kw: Any) -> Attribution:
    return attribute_request(body, cache=cache, cache_key=key if cache is not None else None, **kw)


def assert_fields_equal(resumed: Attribution, full: Attribution) -> None:
    for name in Attribution.__slots__:  # type: ignore[attr-defined]
        assert getattr(resumed, name) == getattr(full, name), name


def same(cache: WalkCache, body: bytes, key: Any = KEY, **kw: Any) -> Attribution:
    """The resumed walk, checked field by field against the full one."""
    full = walk(body, **kw)
    resumed = walk(body, cache, key, **kw)
    assert_fields_equal(resumed, full)
    # And what allocate() makes of them: the bins it reads instead of the regions, then the shares
    # (billed as a cache hit up to the last call, so every boundary and tie rule is exercised).
    assert resumed.bins == full.bins
    assert [list(b[2].items()) for b in profile.ordered(resumed.bins)] == [
        list(b[2].items()) for b in profile.ordered(full.bins)]
    size = len(body) // 4
    usage = Usage(input_tokens=7, cache_creation_input_tokens=size // 10, cache_read_input_tokens=size - size // 10,
                  output_tokens=11)
    assert allocate(resumed, usage, RATES) == allocate(full, usage, RATES)
    return resumed


def recorded(scenario: str) -> Iterator[tuple[bytes, dict[str, str], str]]:
    for path in sorted(p for p in (CC / scenario).glob("*.json") if not p.name.endswith(".meta.json")):
        meta = json.loads(path.with_name(path.stem + ".meta.json").read_text())
        yield path.read_bytes(), {k: v for k, v in meta["headers"]}, meta["path"]


def sdk_order(body: bytes) -> bytes:
    """The same request with system and tools before messages, as the SDKs send it."""
    parsed = json.loads(body)
    head = {k: parsed.pop(k) for k in ("model", "system", "tools") if k in parsed}
    return long_session.dump({**head, **parsed})


@pytest.mark.parametrize("scenario", sorted(p.name for p in CC.iterdir() if p.is_dir()))
def test_every_recording_walks_the_same_resumed_as_from_its_first_byte(scenario: str) -> None:
    cache = WalkCache()
    for body, headers, path in recorded(scenario):
        key = (headers.get("X-Claude-Code-Session-Id"), headers.get("x-claude-code-agent-id"))
        same(cache, body, key, headers=headers, path=path)
    assert cache.hits + cache.misses > 0


@pytest.mark.parametrize("order", ["claude_code", "sdk"])
def test_a_long_session_is_walked_from_where_the_last_call_ended_with_the_same_result(order: str) -> None:
    cache = WalkCache()
    for body in long_session.grow(80):
        same(cache, body if order == "claude_code" else sdk_order(body))
    # The first call has nothing to go on, the second only a hint where to note its state.
    assert cache.misses == 2 and cache.hits == 78


def test_a_resumed_walk_skips_the_shared_prefix() -> None:
    cache = WalkCache()
    bodies = list(long_session.grow(40))
    for body in bodies:
        walk(body, cache)
    entry = cache.entries[next(iter(cache.entries))]
    assert isinstance(entry, Snapshot)
    # The snapshot sits at the start of the last message: everything before it is reused.
    assert entry.pos == bodies[-1].rfind(b'{"role":"') and entry.index == entry.message_count - 1


def grown(turns: int) -> tuple[WalkCache, bytes]:
    cache = WalkCache()
    last = b""
    for last in long_session.grow(turns):
        walk(last, cache)
    return cache, last


@pytest.mark.parametrize("edit", ["compaction", "early_edit", "cache_control"])
def test_an_edit_inside_the_reused_prefix_falls_back_to_a_full_walk(edit: str) -> None:
    cache, last = grown(12)
    misses = cache.misses
    same(cache, long_session.edited(long_session.with_turn(last, 3000), edit))
    assert cache.misses == misses + 1


def test_a_changed_system_prompt_falls_back_when_it_comes_before_the_messages() -> None:
    cache = WalkCache()
    last = b""
    for last in long_session.grow(12):
        walk(sdk_order(last), cache)
    misses = cache.misses
    same(cache, sdk_order(long_session.edited(long_session.with_turn(last, 3000), "system")))
    assert cache.misses == misses + 1


def counting_walks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the system blocks and tool definitions are walked from here on."""
    from opik_cipx.attribute.walk_system import SystemWalk

    counts = {"system": 0, "tools": 0}
    real_block, real_tool = SystemWalk.system_block, SystemWalk.tool

    def block(self: SystemWalk, index: int, pos: int) -> int:
        counts["system"] += 1
        return real_block(self, index, pos)

    def tool(self: SystemWalk, index: int, pos: int) -> int:
        counts["tools"] += 1
        return real_tool(self, index, pos)

    monkeypatch.setattr(SystemWalk, "system_block", block)
    monkeypatch.setattr(SystemWalk, "tool", tool)
    return counts


def test_unchanged_system_and_tools_after_the_messages_are_replayed_not_walked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Claude Code's key order puts system and tools after the messages, outside the reused prefix.
    cache, last = grown(12)
    counts = counting_walks(monkeypatch)
    hits = cache.hits
    body = last
    for turn in range(4):  # and the replayed memos are handed on to every next call
        body = long_session.with_turn(body, 3000 - 500 * turn)
        counts.update(system=0, tools=0)
        resumed = walk(body, cache)
        assert cache.hits == hits + turn + 1 and counts == {"system": 0, "tools": 0}, turn
        full = walk(body)
        assert counts["system"] > 0 and counts["tools"] > 10
        assert_fields_equal(resumed, full)


def test_a_changed_system_prompt_after_the_messages_is_walked_again_the_tools_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, last = grown(12)
    counts = counting_walks(monkeypatch)
    hits = cache.hits
    body = long_session.edited(long_session.with_turn(last, 3000), "system")
    walk(body, cache)
    assert cache.hits == hits + 1 and counts["system"] > 0 and counts["tools"] == 0
    same(cache, long_session.with_turn(body, 500))


def test_a_changed_tool_definition_is_walked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    cache, last = grown(12)
    parsed = json.loads(long_session.with_turn(last, 3000))
    parsed["tools"].append({"name": "NewBuiltin", "description": "added mid-session",
                            "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral", "ttl": "1h"}})
    body = long_session.dump(parsed)
    counts = counting_walks(monkeypatch)
    hits = cache.hits
    resumed = walk(body, cache)
    assert cache.hits == hits + 1 and counts["tools"] == len(parsed["tools"])
    assert_fields_equal(resumed, walk(body))
    assert any(item.item == "NewBuiltin" for item in resumed.items)
    assert any(bp.ttl == "1h" for bp in resumed.breakpoints)
    same(cache, long_session.with_turn(body, 500))


def extended(body: bytes, message: dict[str, Any]) -> bytes:
    parsed = json.loads(body)
    parsed["messages"].append(message)
    return long_session.dump(parsed)


def test_a_new_mcp_server_in_the_new_turn_falls_back_since_it_renames_earlier_items() -> None:
    cache, last = grown(8)
    misses = cache.misses
    body = extended(long_session.with_turn(last, 500), {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_new", "name": "mcp__fresh_srv__do", "input": {}}]})
    same(cache, body)
    assert cache.misses == misses + 1


def test_a_slash_command_invoked_in_the_new_turn_falls_back() -> None:
    cache, last = grown(8)
    misses = cache.misses
    body = extended(long_session.with_turn(last, 500), {"role": "user", "content": [
        {"type": "text", "text": "<command-name>/acme-cmd</command-name>\n<command-args>x</command-args>"}]})
    same(cache, body)
    assert cache.misses == misses + 1


def test_other_headers_or_commands_are_another_walk() -> None:
    cache, last = grown(6)
    misses = cache.misses
    body = long_session.with_turn(last, 500)
    same(cache, body, headers={"x-claude-code-agent-id": "agent-1"})
    same(cache, long_session.with_turn(body, 500), commands=("acme-cmd",))
    assert cache.misses == misses + 2


def test_a_retry_of_the_same_body_reuses_the_snapshot() -> None:
    cache, last = grown(6)
    hits = cache.hits
    same(cache, last)
    same(cache, last)
    assert cache.hits == hits + 2


def test_a_side_call_of_the_session_keeps_the_conversation_s_snapshot() -> None:
    cache, last = grown(6)
    title = long_session.dump({"model": "claude-haiku-4-5", "messages": [
        {"role": "user", "content": "Please write a 5-10 word title for the following conversation: ..."}]})
    same(cache, title)
    hits = cache.hits
    same(cache, long_session.with_turn(last, 700))
    assert cache.hits == hits + 1


def test_the_cache_is_bounded_and_forgets_idle_sessions() -> None:
    now = [0.0]
    cache = WalkCache(max_entries=3, idle_seconds=60, clock=lambda: now[0])
    bodies = list(long_session.grow(3))
    for n in range(5):
        for body in bodies:
            walk(body, cache, key=(f"s{n}", None))
        now[0] += 1
    assert len(cache.entries) == 3
    assert {k[0] for k in cache.entries} == {("s2", None), ("s3", None), ("s4", None)}
    assert cache.held_bytes() < 3 * len(bodies[-1])
    now[0] += 61
    cache.evict()
    assert cache.entries == {}


def test_a_session_with_no_snapshot_leaves_a_hint_where_to_take_one() -> None:
    cache = WalkCache()
    first = next(long_session.grow(1))
    walk(first, cache)
    (entry,) = cache.entries.values()
    assert isinstance(entry, Hint) and entry.message_count == len(json.loads(first)["messages"])


def test_a_resumed_walk_visits_only_the_new_messages_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from opik_cipx.attribute.walk_messages import MessageWalk

    visited: list[int] = []
    real = MessageWalk.fast_block

    def counting(self: MessageWalk, role: str, pos: int, index: int, tool: Any) -> int | None:
        visited.append(pos)
        return real(self, role, pos, index, tool)

    cache, last = grown(40)
    body = long_session.with_turn(last, 5000)
    monkeypatch.setattr(MessageWalk, "fast_block", counting)
    walk(body)
    full = len(visited)
    visited.clear()
    walk(body, cache)
    # The previous call's last message (its marker moved: 1 block) and the new tool round (3 blocks).
    assert len(visited) == 4 and full > 100

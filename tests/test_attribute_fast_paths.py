"""The fast paths of attribution give exactly what the general code they stand in for gives.

* The walker reads compact Claude Code JSON with a few C-level matches per
  message and block (``_Walker.fast``); turned off, the same bodies take the
  general member-by-member walk.
* Char offsets inside decoded text map to bytes by visiting only the escapes;
  ``_by_pieces`` decodes every plain run.
* The tag scan hops from ``<`` to ``<`` with ``str.find`` until there are many;
  with no hops it is one sre scan.

Compared: every region, item, detail (key order included), category total,
breakpoint and span, the call kind and the parse error.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from opik_cipx.attribute import Attribution, attribute_request, rawjson, walk
from tests.support.bodies import cc_body

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
RECORDINGS = sorted(p for p in FIXTURES.glob("*/*.json") if not p.name.endswith(".meta.json"))
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


def _snapshot(attr: Attribution) -> tuple[Any, ...]:
    return (
        [tuple(r) for r in attr.regions],
        [(i.category, i.item, i.bytes, list(i.detail.items())) for i in attr.items],
        [(name, c.bytes, list(c.detail.items())) for name, c in attr.categories.items()],
        [(bp.group, bp.pos, bp.ttl) for bp in attr.breakpoints],
        attr.spans,
        attr.unattributed_bytes,
        attr.call_kind,
        attr.parse_error,
    )


def _both_ways(body: bytes, **kwargs: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    fast = _snapshot(attribute_request(body, **kwargs))
    walk._Walker.fast = False
    try:
        general = _snapshot(attribute_request(body, **kwargs))
    finally:
        walk._Walker.fast = True
    return fast, general


def _request(path: Path) -> tuple[bytes, dict[str, Any]]:
    meta = json.loads(path.with_name(path.stem + ".meta.json").read_text())
    return path.read_bytes(), {"headers": dict(meta["headers"]), "path": meta["path"], "commands": ("acme-cmd",)}


def _layouts(body: bytes) -> Iterator[bytes]:
    data = json.loads(body)
    yield body  # as recorded
    yield json.dumps(data, separators=(",", ":")).encode()  # compact, non-ASCII escaped
    yield json.dumps(data, indent=1, ensure_ascii=False).encode()  # spaced: no fast path applies


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fast_and_general_walk_agree_on_recorded_requests(path: Path) -> None:
    body, kwargs = _request(path)
    for layout in _layouts(body):
        fast, general = _both_ways(layout, **kwargs)
        assert fast == general


def _long_conversation(turns: int, seed: int = 3) -> bytes:
    """The synthetic Claude Code body plus turns in every shape the fast path reads."""
    rng = random.Random(seed)
    body = json.loads(cc_body())
    for turn in range(turns):
        tool_id = f"toolu_{turn:08d}"
        name = rng.choice(["Bash", "Read", "mcp__acme_tools__lookup_item", "Agent", "Skill"])
        tool_input = {"command": f"cat f{turn}", "subagent_type": "acme-reviewer", "skill": "acme-skill"}
        output = "\n".join(f"line {i} \"quoted\" \\ back" for i in range(rng.randint(1, 30)))
        if turn % 7 == 3:
            output += "\n<system-reminder>\nThe task tools haven't been used recently.\n</system-reminder>"
        result: dict[str, Any] = {"tool_use_id": tool_id, "type": "tool_result", "content": output}
        if turn % 5 == 1:
            result = {"type": "tool_result", "tool_use_id": tool_id, "content": [{"type": "text", "text": output}]}
        if turn % 4 == 2:
            result["is_error"] = turn % 8 == 2
        blocks: list[dict[str, Any]] = [{"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}]
        if turn % 3:
            blocks.insert(0, {"type": "text", "text": f"Turn {turn}: let me check."})
        user: list[dict[str, Any]] = [result]
        if turn % 9 == 4:
            user.append({"type": "text", "text": f"and now step {turn}", "cache_control": {"type": "ephemeral"}})
        body["messages"] += [{"role": "assistant", "content": blocks}, {"role": "user", "content": user}]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=turns % 2 == 0).encode()


@pytest.mark.parametrize("turns", [1, 40, 41])
def test_fast_and_general_walk_agree_on_long_conversations(turns: int) -> None:
    fast, general = _both_ways(_long_conversation(turns))
    assert fast == general


def test_compact_text_tool_use_and_tool_result_blocks_all_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path falls back to the general walk whenever it is unsure, which keeps
    # results right but would hide a fast path that stopped applying.
    slow: list[str] = []
    general = walk._Walker.slow_block

    def spy(self: Any, role: str, pos: int, index: int, tool: Any) -> int:
        slow.append(json.loads(self.s[pos : general(self, role, pos, index, tool)])["type"])
        return general(self, role, pos, index, tool)

    monkeypatch.setattr(walk._Walker, "slow_block", spy)
    attribute_request(_long_conversation(41))
    assert sorted(slow) == ["image", "thinking"]  # the two blocks of cc_body() the fast path does not read


def _ascii_tool_refs(value: Any) -> bool:
    """Tool names and ids the fast path reads from the latin-1 view must be ASCII to read the same."""
    if isinstance(value, dict):
        refs = [value.get(k) for k in ("name", "id", "tool_use_id")]
        if any(isinstance(r, str) and not r.isascii() for r in refs):
            return False
        return all(_ascii_tool_refs(v) for v in value.values())
    if isinstance(value, list):
        return all(_ascii_tool_refs(v) for v in value)
    return True


BASES = [_long_conversation(12)] + [p.read_bytes() for p in RECORDINGS]


@st.composite
def mutated_json(draw: Any) -> bytes:
    """A recording or synthetic conversation after a few edits that leave it JSON."""
    body = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        at = draw(st.integers(0, len(body) - 1))
        if op == "delete":
            del body[at : at + draw(st.integers(1, 40))]
        elif op == "insert":
            edits = [b'"x":1,', b" ", b"\n", b"\\n", b'\\"', b"<system-reminder>", b"a", b"{}"]
            body[at:at] = draw(st.sampled_from(edits))
        else:
            body[at] = draw(st.integers(32, 126))
    out = bytes(body)
    try:
        assume(_ascii_tool_refs(json.loads(out)))
    except ValueError:
        assume(False)
    return out


@SETTINGS
@given(mutated_json())
def test_fast_and_general_walk_agree_on_edited_requests(body: bytes) -> None:
    fast, general = _both_ways(body)
    assert fast == general


# Escapes of every kind, a lone surrogate, a trailing backslash, valid and broken UTF-8.
_PIECES = [b"\\n", b"\\\\", b'\\"', b"\\u00e9", b"\\ud83d\\ude00", b"\\ud83d", b"\\", b"\xc3\xa9", b"\xe2\x82", b"\xff"]
_PIECES += [b"ab", b"\\\xc3\xa9"]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=3)), max_size=12),
    st.lists(st.integers(-2, 40), max_size=6),
)
def test_char_offsets_by_escapes_agree_with_piece_by_piece(pieces: list[bytes], offsets: list[int]) -> None:
    raw = b"".join(pieces)
    for wanted in (sorted(offsets), offsets):
        assert rawjson.char_to_byte_offsets(raw, wanted) == rawjson._by_pieces(raw, wanted)


_TAG_SOUP = ["<", "<<", "x", "<system-reminder>", "<system-reminder", "<command-name>/go</command-name>"]
_TAG_SOUP += ["<command-name>a b", "<command-name>"]


def test_tag_scan_hops_agree_with_one_sre_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    texts = [p.read_bytes().decode("latin-1") for p in RECORDINGS]
    texts += ["".join(rng.choice(_TAG_SOUP) for _ in range(rng.randint(0, 700))) for _ in range(300)]
    hopped = [walk._scan_tags(t) for t in texts]
    monkeypatch.setattr(walk, "_TAG_HOPS", 0)
    assert [walk._scan_tags(t) for t in texts] == hopped

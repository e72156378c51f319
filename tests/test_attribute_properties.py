"""Property tests: any body, generated or mutated, is attributed without raising and
with every byte covered exactly once; shares always sum exactly."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.attribute import (
    allocate,
    attribute_request,
    char_to_byte_offsets,
    decode_string,
    largest_remainder,
)
from opik_cipx.model import Usage
from tests.support.attribution import FakeRates, assert_partition
from tests.support.bodies import cc_body

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)

texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "<system-reminder>\n# claudeMd\nContents of /a/CLAUDE.md (x):\n\nhi\n# currentDate\nToday\n</system-reminder>",
            "<command-message>x</command-message>\n<command-name>/x</command-name>\n<command-args>a</command-args>",
            "<local-command-stdout>out</local-command-stdout>",
            "Base directory for this skill: /s/k\n\nbody",
            "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.",
            "This session is being continued from a previous conversation.",
            "SessionStart:startup hook success: x\n\n# MCP Server Instructions\n\n## srv\nuse it",
            "<system-reminder>unterminated",
        ]
    ),
)


@st.composite
def blocks(draw: Any, role: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "tool_use", "tool_result", "thinking", "image", "weird"]))
    block: dict[str, Any]
    if kind == "text":
        block = {"type": "text", "text": draw(texts)}
    elif kind == "tool_use":
        name = draw(st.sampled_from(["Bash", "Skill", "Agent", "mcp__a_b__c", "mcp__x___y", "mcp__"]))
        block = {"type": "tool_use", "id": draw(st.sampled_from(["t1", "t2"])), "name": name, "input": draw(json_values)}
    elif kind == "tool_result":
        content = draw(st.one_of(texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=3), json_values))
        block = {"type": "tool_result", "tool_use_id": draw(st.sampled_from(["t1", "t2", "t3"])), "content": content}
        if draw(st.booleans()):
            block = dict(reversed(list(block.items())))
    elif kind == "thinking":
        block = {"type": "thinking", "thinking": draw(st.text(max_size=20)), "signature": "sig"}
    elif kind == "image":
        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    else:
        block = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        block["cache_control"] = {"type": "ephemeral", "ttl": draw(st.sampled_from(["5m", "1h"]))}
    return block


@st.composite
def claude_like_dicts(draw: Any) -> dict[str, Any]:
    messages = []
    for _ in range(draw(st.integers(0, 5))):
        role = draw(st.sampled_from(["user", "assistant", "system", "other"]))
        content: Any = draw(st.one_of(texts, st.lists(blocks(role), max_size=4)))
        messages.append({"role": role, "content": content})
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if draw(st.booleans()):
        body["system"] = draw(
            st.one_of(texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=3), json_values)
        )
    if draw(st.booleans()):
        body["tools"] = [
            {"name": n, "description": "d", "input_schema": {}} for n in draw(st.lists(st.sampled_from(["Bash", "mcp__a_b__c", "mcp__x___y"]), max_size=3))
        ]
    if draw(st.booleans()):
        body["extra"] = draw(json_values)
    return dict(draw(st.permutations(list(body.items()))))


@st.composite
def claude_like_bodies(draw: Any) -> bytes:
    body = draw(claude_like_dicts())
    return json.dumps(body, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))).encode()


def _counts(attr: Any) -> dict[tuple[str, str], tuple[Any, ...]]:
    # Samples of non-string values show raw JSON, whose spacing differs by design.
    keys = ("inputs", "results", "errors", "count", "text", "chars", "sha256_12", "args")
    return {
        (i.category, i.item): tuple(i.detail.get(k) for k in keys)
        for i in attr.items
        if i.category not in ("framing", "unattributed")
    }


@SETTINGS
@given(claude_like_dicts())
def test_compact_fast_path_and_spaced_slow_path_agree(body: dict[str, Any]) -> None:
    compact = attribute_request(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    spaced = attribute_request(json.dumps(body, indent=2).encode())
    assert _counts(compact) == _counts(spaced)
    assert compact.call_kind == spaced.call_kind
    assert [bp.group for bp in compact.breakpoints] == [bp.group for bp in spaced.breakpoints]


@SETTINGS
@given(claude_like_bodies())
def test_claude_like_bodies_are_covered_exactly_once(body: bytes) -> None:
    attr = attribute_request(body)
    assert_partition(attr, body)
    assert attr.parse_error is None


@SETTINGS
@given(json_values)
def test_arbitrary_json_never_raises_and_is_covered_exactly_once(value: Any) -> None:
    body = json.dumps(value).encode()
    assert_partition(attribute_request(body), body)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(body: bytes) -> None:
    assert_partition(attribute_request(body), body)


BASE = cc_body()


@st.composite
def mutated(draw: Any) -> bytes:
    body = bytearray(BASE)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "delete", "insert", "flip"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if op == "truncate":
            del body[at:]
        elif op == "delete":
            del body[at : at + draw(st.integers(1, 50))]
        elif op == "insert":
            body[at:at] = draw(st.sampled_from([b'"', b"\\", b"{", b"]", b",", b"\xff", b'"x":1,', b"\\u12", b"[[[["]))
        elif body:
            body[min(at, len(body) - 1)] ^= draw(st.integers(1, 255))
    return bytes(body)


@SETTINGS
@given(mutated())
def test_mutated_bodies_never_raise_and_are_covered_exactly_once(body: bytes) -> None:
    attr = attribute_request(body)
    assert_partition(attr, body)


@SETTINGS
@given(
    claude_like_bodies(),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**5),
)
def test_token_shares_always_sum_exactly(body: bytes, fresh: int, write: int, read: int, output: int) -> None:
    usage = Usage(input_tokens=fresh, cache_creation_input_tokens=write, cache_read_input_tokens=read, output_tokens=output)
    out = allocate(attribute_request(body), usage, FakeRates(), [{"type": "text", "text": "x"}])
    assert sum(c.tokens for c in out.categories.values()) == usage.prompt_tokens
    assert sum(i.tokens for i in out.items) == usage.prompt_tokens
    assert sum(i.tokens for i in out.output_items) == output
    assert all(i.tokens >= 0 for i in out.items)


@SETTINGS
@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_largest_remainder_sums_exactly_and_stays_within_one_of_the_exact_share(total: int, weights: list[int]) -> None:
    shares = largest_remainder(total, weights)
    assert sum(shares) == total
    denom = sum(weights)
    if denom:
        for share, weight in zip(shares, weights):
            assert abs(share - total * weight / denom) < 1


@SETTINGS
@given(st.text(max_size=80), st.booleans(), st.data())
def test_char_to_byte_mapping_round_trips_any_slice(text: str, ascii_only: bool, data: Any) -> None:
    raw = json.dumps(text, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")[1:-1]
    assert decode_string(raw) == text
    a = data.draw(st.integers(0, len(text)))
    b = data.draw(st.integers(a, len(text)))
    ra, rb = char_to_byte_offsets(raw, [a, b])
    assert decode_string(raw[ra:rb]) == text[a:b]

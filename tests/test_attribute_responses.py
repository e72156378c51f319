"""Codex's recorded Responses bodies in the attribution categories (attribute/responses.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opik_cipx.attribute.responses import (
    CallMemory,
    allocate_chained,
    attribute_responses,
    calls_in_output,
    context_after,
    previous_response_id,
)
from opik_cipx.model import Usage
from opik_cipx.pricing import PriceTable
from opik_cipx.wire.responses import usage_from_openai
from tests.support.fake_responses import load_recorded

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "codex"
BODIES = sorted(FIXTURES.glob("*/*.body"))


@pytest.mark.parametrize("path", BODIES, ids=[f"{p.parent.name}/{p.stem}" for p in BODIES])
def test_every_recorded_body_is_attributed_to_within_one_percent(path: Path) -> None:
    attr = attribute_responses(path.read_bytes())
    assert attr.parse_error is None
    assert attr.unattributed_bytes <= 0.01 * attr.body_bytes
    assert sum(r.size for r in attr.segments()) == attr.body_bytes
    assert sum(c.bytes for c in attr.categories.values()) == attr.body_bytes


def _items(attr: object) -> dict[tuple[str, str], int]:
    return {(t.category, t.item): t.bytes for t in attr.items}  # type: ignore[attr-defined]


def test_a_turn_lands_in_the_categories_by_meaning() -> None:
    body = (FIXTURES / "agents_ws" / "002.body").read_bytes()
    items = _items(attribute_responses(body))
    doc = json.loads(body)
    assert items[("system", "base instructions")] > 20_000  # "You are Codex, ..."
    assert ("system", "permissions instructions") in items
    assert items[("skills", "listing")] > 1000
    assert items[("builtin_tools", "exec")] > 20_000 and ("builtin_tools", "spawn_agent") in items
    memory = [k for k in items if k[0] == "memory"]
    assert len(memory) == 1 and memory[0][1].endswith("/project/AGENTS.md")
    assert ("reminders", "environment_context") in items
    prompt = next(t for t in attribute_responses(body).items if t.category == "user_prompt")
    assert prompt.detail["text"] == "say hi" and doc["input"][-1]["content"][0]["text"] == "say hi"
    assert attribute_responses((FIXTURES / "agents_ws" / "001.body").read_bytes()).call_kind == "warmup"


def test_shell_call_and_output_land_in_tool_io_by_tool() -> None:
    http = attribute_responses((FIXTURES / "shell_http" / "002.body").read_bytes())
    exec_io = http.item("tool_io", "exec")
    assert exec_io is not None and exec_io.detail["calls"] == 1 and exec_io.detail["outputs"] == 1
    assert "cipx-shell-ok" in exec_io.detail["last_call"]
    # Over WebSocket only the output is sent: its tool is known from the previous response.
    ws = load_recorded(FIXTURES / "shell_ws")
    alone = attribute_responses(ws[2]["body"])
    assert alone.item("tool_io", "(unknown)") is not None
    previous = ws[1]["sent"][-1]["response"]
    memory = CallMemory()
    memory.remember(previous["id"], calls_in_output(previous["output"]))
    chained = attribute_responses(ws[2]["body"], calls=memory.before(previous_response_id(ws[2]["body"])))
    assert chained.item("tool_io", "exec") is not None and chained.item("tool_io", "(unknown)") is None


def test_a_chained_turn_bills_the_inherited_context_not_its_small_body() -> None:
    ws = load_recorded(FIXTURES / "shell_ws")
    prices = PriceTable.builtin()
    rates = prices.rates("gpt-5.1-codex", at=1.77e9)
    first_body, second_body = ws[1]["body"], ws[2]["body"]
    first_out = ws[1]["sent"][-1]["response"]["output"]
    first = allocate_chained(attribute_responses(first_body), Usage(input_tokens=20_000), rates, [], {})
    context = context_after({}, first, first_out)
    usage = usage_from_openai({"input_tokens": 20_400, "input_tokens_details": {"cached_tokens": 19_000},
                               "output_tokens": 10})
    second = allocate_chained(attribute_responses(second_body), usage, rates, [], context)
    assert sum(c.tokens for c in second.categories.values()) == usage.prompt_tokens
    # Most tokens belong to the context the warm-up and first turn left server-side.
    assert second.categories["builtin_tools"].tokens > second.categories["tool_io"].tokens
    assert second.categories["system"].tokens > 5_000
    inherited = second.item("builtin_tools", "exec")
    assert inherited is not None and inherited.bytes == 0 and inherited.detail["inherited_bytes"] > 20_000
    assert second.cache_split["inherited"]["tokens"]["cache_read"] == 19_000
    unchained = allocate_chained(attribute_responses(second_body), usage, rates, [], {})
    assert unchained.categories["tool_io"].tokens > 10_000  # what ignoring the chain would claim


def test_previous_response_id_and_odd_bodies() -> None:
    assert previous_response_id(b'{"type":"response.create","previous_response_id":"resp_9","input":[]}') == "resp_9"
    assert previous_response_id(b'{"input":[]}') is None
    broken = attribute_responses(b'{"model":"gpt-5","input":[{"type":"message","role":"user","content":"hi"},')
    assert broken.parse_error is not None and broken.unattributed_bytes > 0
    odd = attribute_responses(b'{"model":"gpt-5","surprise":1,"input":[{"type":"new_kind"}]}')
    assert odd.item("unattributed", "") is not None
    assert odd.unattributed_bytes == len(b'"surprise":1') + len(b'{"type":"new_kind"}')

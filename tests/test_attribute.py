"""Attribution of synthetic Claude Code request bodies built from the wire facts."""

from __future__ import annotations

import hashlib
import json

import pytest

from opik_cipx.attribute import (
    allocate,
    attribute_request,
    char_to_byte_offsets,
    classify_call,
    decode_string,
    largest_remainder,
    split_mcp_name,
)
from opik_cipx.model import Usage
from tests.support.attribution import FakeRates, assert_partition, where
from tests.support.bodies import MARKERS, PROJECT_MD, USER_MD, cc_body, tool_def


@pytest.mark.parametrize("placement", ["system_message", "reminders"])
@pytest.mark.parametrize("order", ["role-first", "content-first"])
def test_every_planted_marker_lands_in_its_category_and_item(placement: str, order: str) -> None:
    body = cc_body(placement=placement, order=order)
    attr = attribute_request(body)
    wrong = {m: (where(attr, body, m), want) for m, want in MARKERS.items() if where(attr, body, m) != want}
    assert not wrong
    assert attr.parse_error is None


@pytest.mark.parametrize("placement", ["system_message", "reminders"])
def test_a_well_formed_claude_code_body_has_no_unattributed_byte(placement: str) -> None:
    body = cc_body(placement=placement)
    attr = attribute_request(body)
    assert_partition(attr, body)
    assert attr.unattributed_bytes == 0
    assert attr.call_kind == "main"


def test_memory_items_carry_path_and_hash_of_the_file_content() -> None:
    attr = attribute_request(cc_body())
    user = attr.item("memory", "/home/u/.claude/CLAUDE.md")
    project = attr.item("memory", "/work/proj/CLAUDE.md")
    assert user and project
    assert user.detail["sha256_12"] == hashlib.sha256(USER_MD.strip("\n").encode()).hexdigest()[:12]
    assert project.detail["sha256_12"] == hashlib.sha256(PROJECT_MD.strip("\n").encode()).hexdigest()[:12]
    assert user.detail["path"] == "/home/u/.claude/CLAUDE.md"
    # A markdown heading inside a CLAUDE.md does not end the memory section.
    assert project.detail["chars"] == len(PROJECT_MD.strip("\n"))


def test_user_prompt_items_keep_text_and_char_count() -> None:
    attr = attribute_request(cc_body())
    first = attr.item("user_prompt", "#1")
    second = attr.item("user_prompt", "#2")
    assert first and first.detail == {"text": "Fix the flaky test MARK_PROMPT_ONE please", "chars": 41}
    assert second and second.detail["text"] == "Now ship it MARK_PROMPT_TWO"


def test_tool_io_items_count_calls_sizes_and_keep_short_samples() -> None:
    body = cc_body()
    attr = attribute_request(body)
    bash = attr.item("tool_io", "Bash")
    assert bash is not None
    assert bash.detail["inputs"] == 1 and bash.detail["results"] == 1
    assert bash.detail["result_sample"] == "MARK_BASH_OUT\nok"
    assert bash.detail["input_bytes"] == len(b'{"command": "echo MARK_BASH_IN"}')
    # The item is the whole tool_use and tool_result blocks: input, result and their envelopes.
    text = body.decode("latin-1")
    blocks = 0
    for head in (b'"type": "tool_use", "id": "toolu_1"', b'"tool_use_id": "toolu_1"'):
        start = text.rfind("{", 0, body.index(head))
        blocks += json.JSONDecoder().raw_decode(text, start)[1] - start
    assert bash.bytes == blocks > bash.detail["input_bytes"] + bash.detail["result_bytes"]
    mcp = attr.item("mcp", "acme_tools/io:search")
    assert mcp and mcp.detail["server"] == "acme_tools" and mcp.detail["tool"] == "search"


def test_long_tool_result_sample_is_capped_at_200_chars_and_decoded() -> None:
    body = cc_body().replace(b"MARK_BASH_OUT\\nok", b"\\u00e9" * 5000)
    bash = attribute_request(body).item("tool_io", "Bash")
    assert bash and bash.detail["result_sample"] == "é" * 200


def test_slash_command_detail_keeps_the_arguments() -> None:
    attr = attribute_request(cc_body())
    command = attr.item("slash_commands", "review")
    assert command and command.detail["args"] == "MARK_COMMAND_ARGS"


def test_subagent_is_recognised_by_header_and_its_prompt_goes_to_agents() -> None:
    body = cc_body(system_prompt="You are a reviewer. MARK_AGENT_PROMPT\nEnv: linux")
    attr = attribute_request(body, headers={"X-Claude-Code-Agent-Id": "a1b2c3"})
    assert attr.call_kind == "subagent"
    assert attr.agent_id == "a1b2c3"
    assert where(attr, body, "MARK_AGENT_PROMPT") == ("agents", "agent prompt")
    assert classify_call(body, {"x-claude-code-agent-id": "a1b2c3"}) == "subagent"


def test_subagent_is_recognised_by_the_billing_line_of_older_versions() -> None:
    assert classify_call(cc_body(subagent_billing=True), {}) == "subagent"


def test_compaction_call_is_recognised_and_its_instruction_attributed() -> None:
    body = cc_body(compaction=True)
    attr = attribute_request(body)
    assert attr.call_kind == "compaction"
    assert where(attr, body, "MARK_COMPACT_INSTRUCTION") == ("compaction", "instruction")


def test_continued_session_summary_is_compaction() -> None:
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "This session is being continued from a previous conversation that ran out of context. Summary: MARK_SUMMARY"},
                        {"type": "text", "text": "<command-name>/compact</command-name>\n<command-message>compact</command-message>"},
                        {"type": "text", "text": "<local-command-stdout>Compacted MARK_COMPACTED</local-command-stdout>"},
                    ],
                }
            ],
            "tools": [tool_def("Bash", "x")],
        }
    ).encode()
    attr = attribute_request(body)
    assert where(attr, body, "MARK_SUMMARY") == ("compaction", "summary")
    assert where(attr, body, "MARK_COMPACTED") == ("slash_commands", "compact")
    assert attr.call_kind == "main"


def test_title_side_and_count_tokens_calls() -> None:
    title = json.dumps(
        {
            "model": "claude-haiku-4-5",
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197;"}, {"type": "text", "text": "Generate a concise, sentence-case title for this conversation."}],
            "messages": [{"role": "user", "content": "fix tests"}],
            "tools": [],
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        }
    ).encode()
    attr = attribute_request(title)
    assert attr.call_kind == "title"
    assert where(attr, title, "sentence-case") == ("system", "title prompt")
    side = json.dumps({"model": "m", "messages": [{"role": "user", "content": "quota"}], "max_tokens": 1}).encode()
    assert classify_call(side, {}) == "side"
    assert classify_call(cc_body(), {}, path="/v1/messages/count_tokens?beta=true") == "count_tokens"


@pytest.mark.parametrize(
    ("name", "known", "want"),
    [
        ("mcp__acme_tools__search", set(), ("acme_tools", "search")),
        ("mcp__plugin_demo_my_srv__lookup", set(), ("plugin_demo_my_srv", "lookup")),
        ("mcp__srv_x___private", set(), ("srv_x_", "private")),
        # Ambiguous: "_private" or "private"? The other tools of the request decide.
        ("mcp__srv___private", {"mcp__srv__a", "mcp__srv__b", "mcp__srv___private"}, ("srv", "_private")),
        ("mcp__srv___private", {"mcp__srv___a", "mcp__srv___private"}, ("srv_", "private")),
        ("Bash", set(), None),
        ("mcp__nosplit", set(), None),
    ],
)
def test_mcp_names_split_into_server_and_tool(name: str, known: set[str], want: tuple[str, str] | None) -> None:
    assert split_mcp_name(name, known) == want


def test_unknown_top_level_key_and_block_type_are_unattributed_not_errors() -> None:
    body = json.dumps(
        {"model": "m", "future_key": {"x": [1, 2]}, "messages": [{"role": "user", "content": [{"type": "hologram", "data": "zzz"}]}]}
    ).encode()
    attr = attribute_request(body)
    assert_partition(attr, body)
    assert where(attr, body, "future_key") == ("unattributed", "")
    assert where(attr, body, "zzz") == ("unattributed", "")
    assert attr.parse_error is None


def test_regions_are_offsets_into_the_raw_escaped_bytes() -> None:
    prompt = 'say "hi"\nthen café 🎉 — done MARK_ESC'
    for ascii_only in (True, False):
        body = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}]}, ensure_ascii=ascii_only).encode()
        attr = attribute_request(body)
        region = next(r for r in attr.regions if r.category == "user_prompt")
        assert json.loads(b'"' + body[region.start : region.end] + b'"') == prompt
        assert attr.item("user_prompt", "#1").detail["chars"] == len(prompt)  # type: ignore[union-attr]


# -- char -> byte mapping -------------------------------------------------------------


def _raw(text: str, ascii_only: bool) -> bytes:
    return json.dumps(text, ensure_ascii=ascii_only).encode("utf-8")[1:-1]


@pytest.mark.parametrize("ascii_only", [True, False])
def test_char_offsets_map_to_byte_offsets_across_every_escape_kind(ascii_only: bool) -> None:
    text = 'a\nb"c\\d\u00e9e\U0001f389f\tg/\x01h'
    raw = _raw(text, ascii_only)
    offsets = list(range(len(text) + 1))
    mapped = char_to_byte_offsets(raw, offsets)
    assert mapped[0] == 0 and mapped[-1] == len(raw)
    for a, b in zip(offsets, offsets[1:]):
        assert decode_string(raw[mapped[a] : mapped[b]]) == text[a:b]


def test_char_offsets_handle_non_canonical_escapes() -> None:
    raw = rb"x\/y\u0041\uD83C\uDF89z"  # "\/" and upper-case surrogate pair are legal JSON
    text = decode_string(raw)
    assert text == "x/yA\U0001f389z"
    assert char_to_byte_offsets(raw, [0, 1, 2, 3, 4, 5, 6]) == [0, 1, 3, 4, 10, 22, 23]


def test_char_offsets_past_the_end_map_to_the_end() -> None:
    assert char_to_byte_offsets(b"ab", [1, 2, 5]) == [1, 2, 2]
    assert char_to_byte_offsets(b"", [0]) == [0]


# -- tokens and cost --------------------------------------------------------------------


def test_largest_remainder_sums_exactly_and_favours_the_largest_fractions() -> None:
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert largest_remainder(7, [0, 0]) == [4, 3]
    assert largest_remainder(0, [5, 5]) == [0, 0]
    assert largest_remainder(5, [1, 98, 1]) == [0, 5, 0]
    assert sum(largest_remainder(1_000_003, [3, 7, 11, 13, 0])) == 1_000_003


def test_category_tokens_sum_exactly_to_billed_prompt_tokens() -> None:
    attr = attribute_request(cc_body())
    usage = Usage(input_tokens=137, cache_creation_input_tokens=2901, cache_read_input_tokens=15011, output_tokens=333)
    out = allocate(attr, usage, FakeRates(), [{"type": "text", "text": "hi"}])
    assert sum(c.tokens for c in out.categories.values()) == usage.prompt_tokens
    assert sum(i.tokens for i in out.items) == usage.prompt_tokens
    for total in out.items:
        split = total.detail["tokens_split"]
        assert split["cache_read"] + split["cache_write"] + split["input"] == total.tokens
    for part, want in (("cache_read", 15011), ("cache_write", 2901), ("input", 137)):
        assert sum(i.detail["tokens_split"][part] for i in out.items) == want


def test_cache_split_puts_cached_prefix_at_read_price_and_the_tail_at_input_price() -> None:
    body = cc_body()
    attr = attribute_request(body)
    # Breakpoints: identity and main prompt (system), the last block of the last message.
    assert [bp.group for bp in attr.breakpoints] == [2, 1, 1]
    tools_end = attr.spans["tools"][1]
    system_end = attr.spans["system"][1]
    # A read share near tools+system: the read boundary is the main-prompt breakpoint.
    prefix = (tools_end - attr.spans["tools"][0]) + (system_end - attr.spans["system"][0])
    usage = Usage(input_tokens=10, cache_creation_input_tokens=len(body) // 4 - prefix // 4 - 10, cache_read_input_tokens=prefix // 4)
    rates = FakeRates()
    out = allocate(attr, usage, rates, None)
    assert out.cache_split["read_boundary"] == {"group": "system", "pos": attr.breakpoints[2].pos}
    assert out.cache_split["write_boundary"] == {"group": "messages", "pos": attr.breakpoints[0].pos}
    main = out.item("system", "main prompt")
    bash_tool = out.item("builtin_tools", "Bash")
    prompt_two = out.item("user_prompt", "#2")
    assert main and bash_tool and prompt_two
    assert main.detail["tokens_split"]["cache_write"] == main.detail["tokens_split"]["input"] == 0
    assert bash_tool.detail["tokens_split"]["cache_read"] == bash_tool.tokens > 0
    assert prompt_two.detail["tokens_split"]["cache_write"] == prompt_two.tokens > 0
    # Framing after the last breakpoint (model, stream…) is billed as fresh input.
    model = out.item("framing", "model")
    assert model and model.detail["tokens_split"]["input"] == model.tokens
    assert main.cost_usd == pytest.approx(main.tokens * rates.cache_read)
    total_cost = sum(c.cost_usd for c in out.categories.values() if c.cost_usd)
    want = usage.cache_read_input_tokens * rates.cache_read + usage.cache_creation_input_tokens * rates.cache_write_5m + usage.input_tokens * rates.input
    assert total_cost == pytest.approx(want)


def test_no_cache_usage_means_every_byte_is_fresh_input() -> None:
    attr = attribute_request(cc_body())
    out = allocate(attr, Usage(input_tokens=5000), FakeRates(), None)
    assert out.cache_split["bytes"]["input"] == attr.body_bytes
    assert all(i.detail["tokens_split"]["input"] == i.tokens for i in out.items)


def test_one_hour_write_rate_is_blended_from_the_usage_ttl_split() -> None:
    attr = attribute_request(cc_body())
    usage = Usage(cache_creation_input_tokens=1000, cache_creation_5m=250, cache_creation_1h=750)
    rates = FakeRates()
    out = allocate(attr, usage, rates, None)
    total = sum(c.cost_usd or 0.0 for c in out.categories.values())
    assert total == pytest.approx(250 * rates.cache_write_5m + 750 * rates.cache_write_1h)


def test_output_tokens_are_shared_over_response_content_by_size() -> None:
    attr = attribute_request(cc_body())
    content = [
        {"type": "thinking", "thinking": "x" * 300},
        {"type": "text", "text": "y" * 100},
        {"type": "tool_use", "name": "Bash", "input": {"command": "ls"}},
        {"type": "tool_use", "name": "Bash", "input": {"command": "pwd"}},
    ]
    out = allocate(attr, Usage(output_tokens=101), FakeRates(), content)
    by_item = {i.item: i for i in out.output_items}
    assert set(by_item) == {"thinking", "text", "tool_use:Bash"}
    assert sum(i.tokens for i in out.output_items) == 101
    assert by_item["thinking"].tokens > by_item["text"].tokens > by_item["tool_use:Bash"].tokens
    assert by_item["text"].cost_usd == pytest.approx(by_item["text"].tokens * 25e-6)


def test_allocation_without_rates_leaves_cost_unknown_and_without_usage_zero() -> None:
    attr = attribute_request(cc_body())
    out = allocate(attr, Usage(input_tokens=100), None, None)
    assert all(i.cost_usd is None for i in out.items)
    empty = allocate(attr, None, FakeRates(), None)
    assert sum(i.tokens for i in empty.items) == 0 and empty.output_items == []


def test_tokens_for_an_empty_body_land_in_unattributed() -> None:
    attr = attribute_request(b"")
    out = allocate(attr, Usage(input_tokens=7, output_tokens=3), FakeRates(), None)
    assert out.categories["unattributed"].tokens == 7
    assert [(i.item, i.tokens) for i in out.output_items] == [("(no content)", 3)]


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b'{"messages": [{"role": "user", "content": "caf\xc3"}]}',  # truncated UTF-8 sequence
        b"[" * 10_000 + b"]" * 10_000,
        b'{"tools": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"messages": [{"role": "user", "content": [{"type": "tool_result", "content": ' + b"[" * 10_000,
        b'{"system": "\\',
        b'{"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\u12"}]}]}',
    ],
)
def test_bad_bodies_never_raise_and_still_cover_every_byte(body: bytes) -> None:
    attr = attribute_request(body)
    assert_partition(attr, body)


def test_truncated_body_keeps_regions_before_the_cut() -> None:
    body = cc_body()
    cut = body.find(b"MARK_SKILL_BODY") + 5
    attr = attribute_request(body[:cut])
    assert_partition(attr, body[:cut])
    assert attr.parse_error is not None
    assert where(attr, body[:cut], "MARK_BASH_OUT") == ("tool_io", "Bash")
    assert attr.unattributed_bytes < 200


def test_every_prefix_of_a_body_is_covered_exactly_once() -> None:
    body = cc_body()
    for cut in range(0, len(body), 37):
        assert_partition(attribute_request(body[:cut]), body[:cut])


def test_extra_members_after_the_compact_fast_path_are_unattributed_and_counted_once() -> None:
    body = (
        b'{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]},'
        b'{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":[{"type":"text","text":"out"}],"later":1}],'
        b'"id":"msg_1"}]}'
    )
    attr = attribute_request(body)
    assert_partition(attr, body)
    bash = attr.item("tool_io", "Bash")
    assert bash and bash.detail["inputs"] == 1 and bash.detail["results"] == 1
    assert where(attr, body, '"later":1') == ("unattributed", "")
    assert where(attr, body, '"id":"msg_1"') == ("unattributed", "")
    assert where(attr, body, "out") == ("tool_io", "Bash")


def test_a_lone_surrogate_escape_in_a_memory_file_is_hashed_not_fatal() -> None:
    # Found by hypothesis: "\udf89" is legal JSON but not encodable as UTF-8; hashing the CLAUDE.md
    # section used to raise and end the whole attribution with an internal error.
    body = cc_body().replace(b"MARK_USER_MD", b"\\udf89")
    attr = attribute_request(body)
    assert attr.parse_error is None and attr.unattributed_bytes == 0
    files = [i for i in attr.items if i.category == "memory" and "path" in i.detail]
    assert len(files) == 2 and all(len(i.detail["sha256_12"]) == 12 for i in files)

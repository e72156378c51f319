"""CIPX_CAPTURE_CONTENT=false: every dropped field is absent, every kept one present."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.config import Settings
from opik_cipx.ship.privacy import LiveOptions, redact_record, sampled
from opik_cipx.ship.span import (
    TraceState,
    analyze,
    complete_tool_span,
    llm_span,
    session_trace,
    tool_spans,
)
from tests.support.exchanges import (
    PRICES,
    T0,
    UPDATED,
    assistant_blocks,
    context,
    make_exchange,
)

APPLIED = "2026-06-01T12:00:00.000Z"


@pytest.fixture(scope="module")
def records() -> dict[str, Any]:
    facts = analyze(make_exchange("opus", "slash-command", content=assistant_blocks("opus", "after-mcp")), PRICES)
    ctx = context(facts.exchange.session_id)
    span = llm_span(facts, ctx, updated_at=UPDATED)
    # A local command's stdout as the attribution may report it one day: it must go too.
    span["metadata"]["cc"]["slash_commands"]["summary"]["by_command"]["acme-cmd"]["local_command_stdout"] = "secret out"
    (tool,) = tool_spans(facts, ctx, updated_at=UPDATED).values()
    tool = complete_tool_span(tool, "MARKER_TOOL_RESULT", False, ended_at=T0 + 9, updated_at=UPDATED)
    trace = session_trace(ctx, TraceState(ctx.trace_id, T0, T0 + 9, first_prompt="MARKER_FIRST_PROMPT", last_output="MARKER_LAST"), updated_at=UPDATED)
    return {"span": span, "tool": tool, "trace": trace}


def test_llm_span_loses_every_content_field(records: dict[str, Any]) -> None:
    before = records["span"]
    out = redact_record(before, applied_at=APPLIED)
    cc = out["metadata"]["cc"]
    assert "input" not in out and "output" not in out
    assert "text" not in cc["user_prompt"]
    cmd = cc["slash_commands"]["summary"]["by_command"]["acme-cmd"]
    assert "args" not in cmd and "local_command_stdout" not in cmd
    for entry in cc["tool_io"]["by_tool"].values():
        assert "sample_chars" not in entry
    assert "MARKER_" not in json.dumps(out)
    assert before["input"] and "text" in before["metadata"]["cc"]["user_prompt"]  # the original is untouched


def test_llm_span_keeps_numbers_structure_and_identity(records: dict[str, Any]) -> None:
    before = records["span"]
    out = redact_record(before, applied_at=APPLIED)
    cc, bcc = out["metadata"]["cc"], before["metadata"]["cc"]
    for key in ("id", "trace_id", "name", "type", "start_time", "end_time", "model", "provider", "usage",
                "total_estimated_cost", "total_estimated_cost_version", "tags", "ttft", "last_updated_at"):
        assert out[key] == before[key], key
    for key in ("categories", "usage", "metrics_rollup", "mcp", "tools", "skills", "memory", "agents",
                "compaction", "call_kind", "identity", "exchange_id", "session_id"):
        assert cc[key] == bcc[key], key
    assert cc["user_prompt"]["text_chars"] == bcc["user_prompt"]["text_chars"] > 0
    cmd = cc["slash_commands"]["summary"]["by_command"]["acme-cmd"]
    assert cmd["args_chars"] == 20 and cmd["local_command_stdout_chars"] == len("secret out")
    assert cmd["message_chars"] == bcc["slash_commands"]["summary"]["by_command"]["acme-cmd"]["message_chars"]
    for name, entry in cc["tool_io"]["by_tool"].items():
        kept = {k: v for k, v in bcc["tool_io"]["by_tool"][name].items() if k != "sample_chars"}
        assert entry == kept
    assert cc["privacy"] == {"capture_content": False, "applied_at": APPLIED}


def test_tool_sub_span_and_trace_lose_input_and_output(records: dict[str, Any]) -> None:
    for name in ("tool", "trace"):
        out = redact_record(records[name], applied_at=APPLIED)
        assert "input" not in out and "output" not in out
        assert "MARKER_" not in json.dumps(out)
        assert out["metadata"]["cc"]["privacy"]["capture_content"] is False
    tool = redact_record(records["tool"], applied_at=APPLIED)
    assert tool["metadata"]["cc"]["result_chars"] == len("MARKER_TOOL_RESULT")
    assert tool["name"] == "mcp__acme_tools__lookup_item" and tool["parent_span_id"] == records["tool"]["parent_span_id"]
    trace = redact_record(records["trace"], applied_at=APPLIED)
    assert trace["thread_id"] == records["trace"]["thread_id"]
    assert trace["metadata"]["cc"]["identity"]["user_email"] == "ada@example.com"
    assert "user:ada@example.com" in trace["tags"]


def test_sampling_is_stable_per_call_and_close_to_the_rate() -> None:
    keys = [f"exchange-{i}" for i in range(4000)]
    assert all(sampled(k, 1.0) for k in keys) and not any(sampled(k, 0.0) for k in keys)
    picked = [k for k in keys if sampled(k, 0.25)]
    assert 0.21 < len(picked) / len(keys) < 0.29
    assert picked == [k for k in keys if sampled(k, 0.25)]
    assert set(picked) <= {k for k in keys if sampled(k, 0.5)}  # raising the rate only adds calls


def _touch_later(path: Path, seconds: int) -> None:
    stamp = time.time_ns() + seconds * 10**9
    os.utime(path, ns=(stamp, stamp))


def test_options_hot_reload_from_the_config_file(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    live = LiveOptions(settings, env={}, ttl=0.0)
    assert (live.get().capture_content, live.get().sample_rate) == (True, 1.0)
    settings.config_file.parent.mkdir(parents=True, exist_ok=True)
    settings.config_file.write_text("capture_content = false\nsample_rate = 0.25\n")
    assert (live.get().capture_content, live.get().sample_rate) == (False, 0.25)
    settings.config_file.write_text("sample_rate = 7\n")  # invalid: keep the last good values
    _touch_later(settings.config_file, 1)
    assert live.get().sample_rate == 0.25 and live.error and "sample_rate" in live.error
    settings.config_file.unlink()
    assert (live.get().capture_content, live.get().sample_rate) == (True, 1.0)


def test_environment_outranks_the_reloaded_file(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(capture_content=True)
    live = LiveOptions(settings, env={"CIPX_CAPTURE_CONTENT": "true"}, ttl=0.0)
    settings.config_file.parent.mkdir(parents=True, exist_ok=True)
    settings.config_file.write_text("capture_content = false\nsample_rate = 0.5\n")
    assert live.get().capture_content is True and live.get().sample_rate == 0.5

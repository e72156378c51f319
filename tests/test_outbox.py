from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.ship.identity import Identity
from opik_cipx.ship.outbox import DISABLED, Item, Outbox
from opik_cipx.ship.records import record_call
from opik_cipx.ship.span import SessionContext, analyze
from opik_cipx.store.spool import Spool, connect
from tests.support.exchanges import PRICES, T0, assistant_blocks, make_exchange


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(connect(tmp_path / "spool.sqlite3"))
    yield s
    s.close()


def resolver(session_id: str) -> Any:
    def resolve(trace_id: str) -> SessionContext:
        return SessionContext(session_id, trace_id, "proj", Identity(user_email="ada@example.com"))

    return resolve


def rows(box: Outbox) -> dict[str, dict[str, Any]]:
    return {r[0]: json.loads(r[1]) for r in box.conn.execute("SELECT id, payload FROM outbox")}


def two_calls(box: Outbox, *, capture_content: bool = True) -> tuple[Any, Any]:
    first = analyze(make_exchange("opus", "prompt", content=assistant_blocks("opus", "after-mcp"), ex_id="e1"), PRICES)
    second = analyze(make_exchange("opus", "after-mcp", started_at=T0 + 5, ex_id="e2"), PRICES)
    sid = first.exchange.session_id
    r1 = record_call(box, first, resolver(sid), capture_content=capture_content, updated_at="2026-01-01T00:00:00.000Z")
    r2 = record_call(box, second, resolver(sid), capture_content=capture_content, updated_at="2026-01-01T00:00:01.000Z")
    assert (r1.state, r2.state) == ("queued", "queued")
    return first, second


def test_a_session_becomes_one_trace_llm_spans_and_a_completed_tool_span(spool: Spool) -> None:
    box = Outbox(spool.conn)
    two_calls(box)
    stored = rows(box)
    kinds = sorted((r.get("type", "trace"), r.get("name")) for r in stored.values())
    assert kinds == [("llm", "claude"), ("llm", "claude"), ("tool", "mcp__acme_tools__lookup_item"),
                     ("trace", "claude-code session")]
    trace = next(r for r in stored.values() if "thread_id" in r)
    assert trace["metadata"]["cc"]["calls"] == 2 and trace["end_time"] == "2026-05-28T20:26:46.500Z"
    tool = next(r for r in stored.values() if r.get("type") == "tool")
    assert "MARKER_MCP_RESULT_7f3a" in json.dumps(tool["output"])  # the newer, completed version replaced the open one
    assert all(r.get("trace_id", trace["id"]) == trace["id"] for r in stored.values())
    assert box.stats()["queue_depth"] == 4


def test_recording_the_same_exchange_twice_is_a_no_op(spool: Spool) -> None:
    box = Outbox(spool.conn)
    first, _ = two_calls(box)
    before = rows(box)
    again = record_call(box, first, resolver(first.exchange.session_id), capture_content=True)
    assert again.state == "duplicate" and rows(box) == before


def test_privacy_mode_keeps_content_out_of_the_outbox(spool: Spool) -> None:
    box = Outbox(spool.conn)
    two_calls(box, capture_content=False)
    blob = json.dumps(rows(box))
    assert "MARKER_" not in blob
    assert all(r["metadata"]["cc"]["privacy"]["capture_content"] is False for r in rows(box).values())


def test_batches_are_one_kind_oldest_first_and_bounded(spool: Spool) -> None:
    box = Outbox(spool.conn)
    for i in range(5):
        box.put("span", {"id": f"s{i}", "x": "y" * 100})
    box.put("trace", {"id": "t0"})
    batch = box.next_batch(max_items=3)
    assert [i.id for i in batch] == ["s0", "s1", "s2"] and {i.kind for i in batch} == {"span"}
    assert [i.id for i in box.next_batch(max_bytes=250)] == ["s0", "s1"]
    assert [i.id for i in box.next_batch(max_bytes=10)] == ["s0"]  # too big alone still goes alone


def test_ack_keeps_a_version_written_while_the_batch_was_in_flight(spool: Spool) -> None:
    box = Outbox(spool.conn)
    box.put("span", {"id": "a", "v": 1})
    box.put("span", {"id": "b", "v": 1})
    batch = box.next_batch()
    box.put("span", {"id": "a", "v": 2})
    box.ack(batch)
    assert rows(box) == {"a": {"id": "a", "v": 2}}
    assert box.stats()["shipped"] == 2
    assert box.stats()["outbox_bytes"] == len(b'{"id":"a","v":2}')


def test_rejected_records_are_kept_aside_with_the_reason(spool: Spool) -> None:
    box = Outbox(spool.conn)
    box.put("span", {"id": "bad"})
    (item,) = box.next_batch()
    box.reject(item, status=400, reason="HTTP 400: Span id must be a version 7 UUID")
    stats = box.stats()
    assert stats["queue_depth"] == 0 and stats["rejected"] == 1 and stats["outbox_bytes"] == 0
    assert stats["last_rejection"]["reason"].endswith("version 7 UUID") and stats["last_rejection"]["status"] == 400
    kept = spool.conn.execute("SELECT payload FROM outbox_rejected WHERE id = 'bad'").fetchone()
    assert json.loads(kept[0]) == {"id": "bad"}


def test_full_outbox_sheds_oldest_content_first_keeping_counts_and_costs(spool: Spool) -> None:
    box = Outbox(spool.conn, max_bytes=3000)
    for i in range(4):
        box.put("span", {
            "id": f"s{i}", "input": {"text": "x" * 600}, "output": {"text": "y" * 300},
            "usage": {"total_tokens": 100 + i}, "total_estimated_cost": 0.5,
            "metadata": {"cc": {"user_prompt": {"text": "secret", "text_chars": 6}}},
        })
    stored = rows(box)
    assert "input" not in stored["s0"] and "output" not in stored["s0"]
    assert stored["s0"]["usage"] == {"total_tokens": 100} and stored["s0"]["total_estimated_cost"] == 0.5
    assert stored["s0"]["metadata"]["cc"]["user_prompt"] == {"text_chars": 6}
    assert stored["s0"]["metadata"]["cc"]["shed"]["reason"] == "outbox full"
    assert "input" in stored["s3"]  # the newest keeps its content
    stats = box.stats()
    assert stats["shed"] >= 1 and stats["dropped"] == 0 and stats["outbox_bytes"] <= 3000
    assert stats["outbox_bytes"] == sum(len(json.dumps(r, separators=(",", ":"))) for r in stored.values())


def test_when_shedding_is_not_enough_the_oldest_records_are_dropped_and_counted(spool: Spool) -> None:
    box = Outbox(spool.conn, max_bytes=64 * 1024)
    for i in range(40):
        box.put("span", {"id": f"s{i:02d}", "metadata": {"cc": {"pad": "z" * 2000}}})
    stats = box.stats()
    assert stats["dropped"] > 0 and stats["outbox_bytes"] <= 64 * 1024
    assert stats["queue_depth"] + stats["dropped"] == 40
    assert "s39" in rows(box) and "s00" not in rows(box)


def test_unmarked_exchanges_are_found_for_recovery(spool: Spool) -> None:
    box = Outbox(spool.conn)
    for ex_id in ("x1", "x2", "x3"):
        spool.add(make_exchange("opus", "prompt", ex_id=ex_id))
    box.mark("x2", DISABLED)
    assert box.unmarked_since(0) == ["x1", "x3"]
    assert box.unmarked_since(T0 + 1) == []
    assert box.stats()["disabled"] == 1


def test_item_size_is_its_payload() -> None:
    assert Item("a", "span", 1, b"12345").size == 5

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sqlite3
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.model import CallKind, Cost, Exchange, Outcome, Usage
from opik_cipx.store import bodies
from opik_cipx.store.spool import (
    MAX_CHUNK,
    MIN_CHUNK,
    SLICE,
    AsyncSpool,
    CallRow,
    Spool,
    chunk_bounds,
    connect,
)

# --- helpers ---------------------------------------------------------------------------------


def make_exchange(
    n: int,
    *,
    started_at: float | None = None,
    session_id: str | None = "sess-a",
    model: str | None = "claude-sonnet-4-5",
    kind: CallKind = CallKind.MESSAGES,
    outcome: Outcome = Outcome.COMPLETE,
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    usage: Usage | None = None,
    cost: Cost | None = None,
) -> Exchange:
    request_body = request_body if request_body is not None else f'{{"n":{n}}}'.encode()
    response_body = response_body if response_body is not None else f'{{"r":{n}}}'.encode()
    return Exchange(
        id=f"{n:032x}",
        started_at=1_700_000_000.0 + n if started_at is None else started_at,
        method="POST",
        path="/v1/messages",
        kind=kind,
        request_body=request_body,
        response_body=response_body,
        status=200,
        session_id=session_id,
        model=model,
        usage=usage,
        cost=cost,
        outcome=outcome,
        request_bytes=len(request_body),
        response_bytes=len(response_body),
    )


def full_exchange() -> Exchange:
    raw_usage = {
        "input_tokens": 12,
        "output_tokens": 345,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 20000,
        "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600},
        "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1},
        "service_tier": "standard",
        "inference_geo": "us",
        "speed": "fast",
        "future_field": [1, {"x": None}],
    }
    return Exchange(
        id="0123456789abcdef0123456789abcdef",
        started_at=1_712_345_678.123456,
        method="POST",
        path="/v1/messages?beta=true",
        kind=CallKind.MESSAGES,
        request_headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        request_body=b'{"model":"claude-opus-4-1","messages":[{"role":"user","content":"hi \xc3\xa9"}]}',
        status=200,
        response_headers={"content-type": "text/event-stream", "request-id": "req_1"},
        response_body=b"event: message_start\ndata: {}\n\n",
        response_encoding="gzip",
        streamed=True,
        ttfb_ms=101.25,
        ttft_ms=350.5,
        duration_ms=2048.0,
        session_id="session-1",
        agent_id="agent-7",
        model="claude-opus-4-1",
        stop_reason="end_turn",
        usage=Usage.from_api(raw_usage),
        cost=Cost(
            total_usd=0.1234567,
            parts={"input": 0.00018, "cache_write_5m": 0.0075, "output": 0.025875, "web_search": 0.02},
            price_key="claude-opus-4",
            effective_date="2025-08-05",
            multiplier=6.0,
            long_context=True,
            note="override: team rate",
        ),
        outcome=Outcome.COMPLETE,
        error=None,
        request_bytes=81,
        response_bytes=33,
    )


def growing_conversation(turns: int = 40, seed: int = 7) -> list[bytes]:
    """Request bodies the way Claude Code sends them: each turn resends every earlier message.

    Each turn adds a tool result and a user text, then the assistant's thinking, text and
    tool call; the cache breakpoint moves to the newest block every turn, and the system
    prompt and tool definitions follow the messages, as in the real body.
    """
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(4000)
    ]

    def prose(n: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(max(1, n // 5)))[:n]

    system = [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": prose(12_000), "cache_control": {"type": "ephemeral"}},
    ]
    tools = [
        {
            "name": f"Tool{i}",
            "description": prose(1500),
            "input_schema": {
                "type": "object",
                "properties": {f"p{j}": {"type": "string", "description": prose(80)} for j in range(4)},
                "required": ["p0"],
            },
        }
        for i in range(18)
    ]
    messages: list[dict[str, object]] = []
    bodies: list[bytes] = []
    for turn in range(turns):
        blocks: list[dict[str, object]] = [{"type": "text", "text": prose(rng.randint(200, 2000))}]
        if turn:
            blocks.insert(
                0,
                {
                    "type": "tool_result",
                    "tool_use_id": f"toolu_{turn:04d}",
                    "content": prose(rng.randint(6000, 24000)),
                },
            )
        messages.append({"role": "user", "content": blocks})
        sent = json.loads(json.dumps(messages))
        sent[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        body = {
            "model": "claude-sonnet-4-5",
            "messages": sent,
            "system": system,
            "tools": tools,
            "metadata": {"user_id": "user_abc"},
            "max_tokens": 32000,
            "stream": True,
        }
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": prose(600), "signature": "c2ln"},
                    {"type": "text", "text": prose(rng.randint(100, 1500))},
                    {
                        "type": "tool_use",
                        "id": f"toolu_{turn + 1:04d}",
                        "name": "Tool3",
                        "input": {"p0": prose(200)},
                    },
                ],
            }
        )
    return bodies


def assert_refs_exact(spool: Spool) -> None:
    """Every blob's and every chunk list's count equals the references rows actually hold, and
    nothing is kept that nothing refers to."""
    conn = spool.conn
    blob_refs: Counter[int] = Counter()
    for (own,) in conn.execute("SELECT own FROM chunk_lists"):
        blob_refs.update(bodies.unpack(own))
    for (rowid,) in conn.execute("SELECT b.rowid FROM exchanges e JOIN blobs b ON b.hash = e.response_hash"):
        blob_refs[rowid] += 1
    assert dict(conn.execute("SELECT rowid, refs FROM blobs")) == dict(blob_refs)
    list_refs: Counter[int] = Counter()
    list_refs.update(r for (r,) in conn.execute("SELECT request_list FROM exchanges WHERE request_list IS NOT NULL"))
    list_refs.update(r for (r,) in conn.execute("SELECT parent FROM chunk_lists WHERE parent IS NOT NULL"))
    assert dict(conn.execute("SELECT id, refs FROM chunk_lists")) == dict(list_refs)


def referenced_hashes(spool: Spool) -> set[bytes]:
    """The blobs some stored call's bodies still spell."""
    out: set[bytes] = set()
    for list_id, response_hash in spool.conn.execute("SELECT request_list, response_hash FROM exchanges"):
        if list_id is not None:
            ids = bodies.resolve(spool.conn, list_id)
            marks = ", ".join("?" for _ in ids)
            out.update(h for (h,) in spool.conn.execute(f"SELECT hash FROM blobs WHERE rowid IN ({marks})", ids))
        if response_hash is not None:
            out.add(response_hash)
    return out


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(connect(tmp_path / "spool" / "spool.sqlite3"))
    yield s
    s.close()


# --- chunking --------------------------------------------------------------------------------


def _assert_tiles(body: bytes, bounds: list[tuple[int, int]]) -> None:
    position = 0
    for start, end in bounds:
        assert start == position and end > start
        position = end
    assert position == len(body)


@given(st.binary(max_size=20_000))
def test_chunks_tile_arbitrary_bytes_exactly(body: bytes) -> None:
    _assert_tiles(body, chunk_bounds(body))


@given(
    st.lists(
        st.one_of(
            st.sampled_from([b'{"role":', b'{"type":', b'{"type" : ', b"\xff\xfe", b"}]", b","]),
            st.binary(max_size=3000),
        ),
        max_size=300,
    )
)
def test_chunks_tile_bodies_dense_with_boundaries(parts: list[bytes]) -> None:
    body = b"".join(parts)
    _assert_tiles(body, chunk_bounds(body))


def test_tiny_pieces_are_merged_into_chunks_of_at_least_min_size() -> None:
    body = b"[" + b",".join(b'{"role":"user","content":"%d"}' % i for i in range(5000)) + b"]"
    bounds = chunk_bounds(body)
    _assert_tiles(body, bounds)
    assert all(end - start >= MIN_CHUNK for start, end in bounds[:-1])
    assert all(end - start <= MAX_CHUNK for start, end in bounds)
    assert len(bounds) <= len(body) // MIN_CHUNK + 1


def test_huge_single_piece_is_sliced_not_merged() -> None:
    head = b'{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}'
    huge = b'{"type":"tool_result","content":"' + b"x" * (3 * SLICE + 5) + b'"}'
    body = head + b"," + huge + b"]}"
    bounds = chunk_bounds(body)
    _assert_tiles(body, bounds)
    assert max(end - start for start, end in bounds) == SLICE
    # The big piece starts its own chunk, so the same tool result dedups in any conversation.
    assert any(body[start:end].startswith(b'{"type":"tool_result"') for start, end in bounds)


def test_cuts_fall_back_into_step_after_an_insertion() -> None:
    bodies = growing_conversation(turns=6)
    earlier, later = bodies[-2], bodies[-1]
    earlier_chunks = {earlier[s:e] for s, e in chunk_bounds(earlier)}
    later_chunks = [later[s:e] for s, e in chunk_bounds(later)]
    # The system prompt and tools follow the messages, so they shift every turn; they must
    # still come out as the same chunks.
    tools_at = later.index(b'"tools":')
    tail = [c for c, (s, _) in zip(later_chunks, chunk_bounds(later), strict=True) if s > tools_at + 4096]
    assert tail and all(c in earlier_chunks for c in tail)


# --- round trips -----------------------------------------------------------------------------


def test_full_exchange_round_trips_every_field(spool: Spool) -> None:
    ex = full_exchange()
    spool.add(ex)
    back = spool.get(ex.id)
    assert back == ex
    assert back.usage is not None and back.usage.cache_creation_5m == 400
    assert back.usage.cache_creation_1h == 600
    assert back.usage.raw["future_field"] == [1, {"x": None}]
    assert isinstance(back.kind, CallKind) and isinstance(back.outcome, Outcome)


def test_unknown_cost_and_missing_usage_round_trip_as_none(spool: Spool) -> None:
    priced_unknown = make_exchange(
        1, usage=Usage(input_tokens=5), cost=Cost(total_usd=None, note="unknown model")
    )
    unpriced = make_exchange(2, usage=None, cost=None)
    spool.add(priced_unknown)
    spool.add(unpriced)
    assert spool.get(priced_unknown.id) == priced_unknown
    assert spool.get(unpriced.id) == unpriced
    rows = {r.id: r for r in spool.calls()}
    assert rows[priced_unknown.id].cost_usd is None
    assert rows[unpriced.id].input_tokens == 0


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_round_trips(spool: Spool, outcome: Outcome) -> None:
    ex = make_exchange(3, outcome=outcome)
    ex.error = None if outcome is Outcome.COMPLETE else f"reason: {outcome}"
    ex.status = None if outcome is Outcome.UNREACHABLE else 200
    spool.add(ex)
    assert spool.get(ex.id) == ex


def test_binary_non_utf8_and_empty_bodies_round_trip(spool: Spool) -> None:
    binary = bytes(range(256)) * 40 + b'\xff{"role":\x00\xc3(' + os.urandom(5000)
    cases = [
        make_exchange(1, request_body=binary, response_body=binary[::-1]),
        make_exchange(2, request_body=b"", response_body=b""),
        make_exchange(3, request_body=b"", response_body=b"\x80\x81"),
        make_exchange(4, request_body=b"\xfe", response_body=b""),
    ]
    for ex in cases:
        spool.add(ex)
    for ex in cases:
        assert spool.get(ex.id) == ex


@pytest.mark.slow
def test_thirty_megabyte_body_round_trips(spool: Spool) -> None:
    screenshot = base64.b64encode(os.urandom(20 * 1024 * 1024))
    body = (
        b'{"messages":[{"role":"user","content":[{"type":"image","source":{"data":"'
        + screenshot
        + b'"}},{"type":"text","text":"what is this"}]}],"tail":"'
        + os.urandom(2 * 1024 * 1024)
        + b'"}'
    )
    assert len(body) > 28 * 1024 * 1024
    ex = make_exchange(1, request_body=body, response_body=body[:1_000_000])
    spool.add(ex)
    back = spool.get(ex.id)
    assert back is not None and back.request_body == body and back.response_body == body[:1_000_000]
    assert spool.conn.execute("SELECT max(size) FROM blobs").fetchone()[0] <= SLICE


def test_unknown_id_gets_none(spool: Spool) -> None:
    assert spool.get("nope") is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_body=st.binary(max_size=70_000), response_body=st.binary(max_size=2000))
def test_any_bytes_round_trip_through_the_store(request_body: bytes, response_body: bytes) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    store = Spool(conn)
    ex = make_exchange(1, request_body=request_body, response_body=response_body)
    store.add(ex)
    assert store.get(ex.id) == ex
    store.close()


# --- idempotence and references --------------------------------------------------------------


def test_re_adding_the_same_exchange_changes_nothing(spool: Spool) -> None:
    bodies = growing_conversation(turns=3)
    ex = make_exchange(1, request_body=bodies[-1])
    spool.add(ex)
    blobs_before = list(spool.conn.execute("SELECT hash, size, refs FROM blobs ORDER BY hash"))
    spool.add(ex)
    spool.add(ex)
    assert spool.conn.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 1
    assert list(spool.conn.execute("SELECT hash, size, refs FROM blobs ORDER BY hash")) == blobs_before
    assert_refs_exact(spool)


def test_replacing_an_exchange_releases_chunks_only_it_held(spool: Spool) -> None:
    bodies = growing_conversation(turns=4)
    spool.add(make_exchange(1, request_body=bodies[1]))
    spool.add(make_exchange(2, request_body=bodies[3], response_body=b"first"))
    updated = make_exchange(2, request_body=bodies[2], response_body=b"second", outcome=Outcome.TRUNCATED)
    spool.add(updated)
    assert spool.get(updated.id) == updated
    assert_refs_exact(spool)
    # Nothing in the store is unreferenced: the chunks only bodies[3] had are gone.
    assert spool.conn.execute("SELECT count(*) FROM blobs WHERE refs <= 0").fetchone()[0] == 0
    stored = {h for (h,) in spool.conn.execute("SELECT hash FROM blobs")}
    assert stored == referenced_hashes(spool)


def test_repeated_chunk_within_one_body_is_counted_per_use(spool: Spool) -> None:
    # Big enough to stand alone as a chunk, as a repeated large tool result would.
    block = b'{"type":"tool_result","content":"' + b"same output " * (MAX_CHUNK // 10) + b'"}'
    body = b'{"messages":[{"role":"user","content":[' + b",".join([block] * 5) + b"]}]}"
    ex = make_exchange(1, request_body=body)
    spool.add(ex)
    assert spool.get(ex.id) == ex
    assert_refs_exact(spool)
    assert spool.conn.execute("SELECT max(refs) FROM blobs").fetchone()[0] >= 4


def test_growing_conversation_stores_well_under_a_tenth_of_the_naive_total(spool: Spool) -> None:
    bodies = growing_conversation(turns=40)
    assert 700_000 < len(bodies[-1]) < 1_300_000
    for n, body in enumerate(bodies):
        spool.add(make_exchange(n, request_body=body, response_body=b""))
    counters = spool.counters()
    naive = sum(len(b) for b in bodies)
    assert counters["body_bytes"] == naive
    unique_raw = spool.conn.execute("SELECT sum(size) FROM blobs").fetchone()[0]
    print(
        f"\n40 turns: naive {naive} B, unique chunks {unique_raw} B ({unique_raw / naive:.1%}), "
        f"stored compressed {counters['stored_bytes']} B ({counters['stored_bytes'] / naive:.1%}), "
        f"{counters['stored_chunks']} chunks"
    )
    # Dedup alone (before compression) must do it; compression is on top.
    assert unique_raw < 0.10 * naive
    assert counters["stored_bytes"] < 0.06 * naive
    assert spool.get(make_exchange(39).id).request_body == bodies[-1]
    assert_refs_exact(spool)


# --- listings --------------------------------------------------------------------------------


def _key(row: CallRow) -> tuple[float, str]:
    return (row.started_at, row.id)


def test_keyset_paging_is_exact_across_equal_timestamps(spool: Spool) -> None:
    rng = random.Random(5)
    exchanges = [make_exchange(n, started_at=1000.0 + rng.randrange(5)) for n in range(57)]
    rng.shuffle(exchanges)
    for ex in exchanges:
        spool.add(ex)
    expected = sorted(((ex.started_at, ex.id) for ex in exchanges), reverse=True)
    seen: list[tuple[float, str]] = []
    before: tuple[float, str] | None = None
    pages = 0
    while True:
        page = spool.calls(limit=7, before=before)
        if not page:
            break
        pages += 1
        seen.extend(_key(r) for r in page)
        before = _key(page[-1])
    assert seen == expected
    assert pages == 9


def test_filters_select_and_combine_with_paging(spool: Spool) -> None:
    for n in range(40):
        spool.add(
            make_exchange(
                n,
                session_id=("s1", "s2", None)[n % 3],
                model=("opus", "haiku")[n % 2],
                kind=CallKind.COUNT_TOKENS if n % 5 == 0 else CallKind.MESSAGES,
            )
        )
    s1 = spool.calls(limit=100, session_id="s1")
    assert [r.id for r in s1] == [f"{n:032x}" for n in reversed(range(40)) if n % 3 == 0]
    assert {r.model for r in spool.calls(limit=100, model="haiku")} == {"haiku"}
    assert len(spool.calls(limit=100, model="haiku")) == 20
    counted = spool.calls(limit=100, kind=CallKind.COUNT_TOKENS)
    assert [r.kind for r in counted] == ["count_tokens"] * 8
    recent = spool.calls(limit=100, since=1_700_000_030.0)
    assert [r.id for r in recent] == [f"{n:032x}" for n in range(39, 29, -1)]
    combined = spool.calls(limit=100, session_id="s2", model="opus", kind="messages")
    assert [r.id for r in combined] == [
        f"{n:032x}" for n in reversed(range(40)) if n % 3 == 1 and n % 2 == 0 and n % 5 != 0
    ]
    first = spool.calls(limit=3, model="opus")
    second = spool.calls(limit=3, model="opus", before=_key(first[-1]))
    assert [r.id for r in first + second] == [r.id for r in spool.calls(limit=6, model="opus")]
    assert spool.calls(limit=0) == []


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"session_id": "s"},
        {"model": "m"},
        {"kind": "messages"},
        {"since": 5.0},
        {"session_id": "s", "model": "m"},
    ],
)
def test_listing_pages_walk_an_index_without_sorting(spool: Spool, filters: dict[str, object]) -> None:
    # Enough rows, analysed, for the planner's choice to be the one it makes on a real spool.
    for n in range(300):
        spool.add(
            make_exchange(n, session_id=f"s{n % 30}", model=f"m{n % 4}", request_body=b"", response_body=b"")
        )
    spool.conn.execute("ANALYZE")
    traced: list[str] = []
    spool.conn.set_trace_callback(traced.append)
    try:
        spool.calls(limit=50, before=(1e12, "z"), **filters)  # type: ignore[arg-type]
    finally:
        spool.conn.set_trace_callback(None)
    (listing,) = [sql for sql in traced if sql.lstrip().upper().startswith("SELECT")]
    plan = " | ".join(r[3] for r in spool.conn.execute(f"EXPLAIN QUERY PLAN {listing}"))
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    assert "SCAN" not in plan, plan


def test_last_returns_newest_full_exchanges_llm_only_by_default(spool: Spool) -> None:
    spool.add(make_exchange(1))
    spool.add(make_exchange(2, kind=CallKind.OTHER))
    spool.add(make_exchange(3))
    spool.add(make_exchange(4, kind=CallKind.COUNT_TOKENS))
    assert [e.id for e in spool.last(2)] == [make_exchange(3).id, make_exchange(1).id]
    assert [e.id for e in spool.last(2, llm_only=False)] == [make_exchange(4).id, make_exchange(3).id]
    newest = spool.last()[0]
    assert newest == make_exchange(3)


def test_counters_total_by_kind_outcome_and_unknown_cost(spool: Spool) -> None:
    spool.add(make_exchange(1, usage=Usage(input_tokens=1), cost=Cost(total_usd=0.5)))
    spool.add(make_exchange(2, usage=Usage(input_tokens=1), cost=Cost(total_usd=None)))
    spool.add(make_exchange(3, usage=Usage(input_tokens=1), cost=None))
    spool.add(make_exchange(4, outcome=Outcome.UNREACHABLE, request_body=b"abc", response_body=b""))
    spool.add(make_exchange(5, kind=CallKind.COUNT_TOKENS, outcome=Outcome.HTTP_ERROR))
    spool.add(make_exchange(6, kind=CallKind.OTHER))
    c = spool.counters()
    assert c["calls"] == 6
    assert c["kind.messages"] == 4 and c["kind.count_tokens"] == 1 and c["kind.other"] == 1
    assert c["outcome.complete"] == 4 and c["outcome.unreachable"] == 1 and c["outcome.http_error"] == 1
    assert c["outcome.truncated"] == 0
    assert c["unknown_cost"] == 2
    wire = [make_exchange(n) for n in (1, 2, 3, 5, 6)]
    assert c["request_bytes"] == sum(e.request_bytes for e in wire) + 3
    assert c["response_bytes"] == sum(e.response_bytes for e in wire)
    assert c["stored_chunks"] == spool.conn.execute("SELECT count(*) FROM blobs").fetchone()[0] > 0
    assert all(isinstance(v, int) for v in c.values())


def test_counters_on_an_empty_spool_are_zero(spool: Spool) -> None:
    c = spool.counters()
    assert set(c.values()) == {0}
    assert "kind.messages" in c and "outcome.client_gone" in c


# --- the file on disk ------------------------------------------------------------------------


def test_connect_makes_private_dirs_and_sets_wal_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "state" / "spool" / "spool.sqlite3"
    conn = connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        for directory in (path.parent, path.parent.parent):
            assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    finally:
        conn.close()


def test_reopen_after_close_preserves_data(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    first = Spool(connect(path))
    ex = full_exchange()
    first.add(ex)
    first.add(make_exchange(9))
    first.close()
    second = Spool(connect(path))
    try:
        assert second.get(ex.id) == ex
        assert [r.id for r in second.calls()] == [ex.id, make_exchange(9).id]  # newest first
    finally:
        second.close()


def test_size_bytes_counts_database_and_wal(spool: Spool) -> None:
    empty = spool.size_bytes()
    spool.add(make_exchange(1, request_body=os.urandom(300_000)))
    grown = spool.size_bytes()
    assert grown >= empty + 300_000
    db_file = spool.conn.execute("PRAGMA database_list").fetchone()[2]
    on_disk = sum(os.path.getsize(p) for p in (db_file, db_file + "-wal") if os.path.exists(p))
    assert grown == on_disk


def test_readers_on_another_connection_see_committed_adds(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    writer = Spool(connect(path))
    reader = Spool(connect(path))
    try:
        writer.add(make_exchange(1))
        assert [r.id for r in reader.calls()] == [make_exchange(1).id]
    finally:
        writer.close()
        reader.close()


# --- AsyncSpool ------------------------------------------------------------------------------


async def test_async_spool_works_on_one_thread_that_is_not_the_loops(tmp_path: Path) -> None:
    spool = await AsyncSpool.open(tmp_path / "spool" / "spool.sqlite3")
    try:
        loop_thread = threading.get_ident()
        idents = {await spool.run(lambda _s: threading.get_ident()) for _ in range(5)}
        assert len(idents) == 1 and loop_thread not in idents
        # The connection itself was opened on that worker, too.
        await spool.add(make_exchange(1))
        assert await spool.get(make_exchange(1).id) == make_exchange(1)
    finally:
        await spool.close()


async def test_async_spool_never_blocks_the_loop_on_sqlite(tmp_path: Path) -> None:
    from blockbuster import blockbuster_ctx

    spool = await AsyncSpool.open(tmp_path / "spool.sqlite3")
    with blockbuster_ctx("opik_cipx"):
        await spool.add(full_exchange())
        assert (await spool.get(full_exchange().id)) == full_exchange()
        assert len(await spool.calls(limit=5, kind="messages")) == 1
        assert (await spool.counters())["calls"] == 1
        assert [e.id for e in await spool.last(1)] == [full_exchange().id]
        assert await spool.size_bytes() > 0
        await spool.close()
    # Sanity check that the guard is armed: the same call made on the loop is caught.
    plain = Spool(connect(tmp_path / "other.sqlite3"))
    with blockbuster_ctx("opik_cipx"), pytest.raises(Exception, match=r"[Bb]locking"):
        plain.counters()
    plain.close()


async def test_concurrent_adds_from_many_tasks_all_land(tmp_path: Path) -> None:
    spool = await AsyncSpool.open(tmp_path / "spool.sqlite3")
    bodies = growing_conversation(turns=8)
    try:
        exchanges = [
            make_exchange(n, request_body=bodies[n % len(bodies)], started_at=2000.0 + n % 7)
            for n in range(120)
        ]
        await asyncio.gather(*(spool.add(ex) for ex in exchanges))
        # Re-adds racing with new adds stay idempotent.
        await asyncio.gather(*(spool.add(ex) for ex in exchanges[::3]))
        counters = await spool.counters()
        assert counters["calls"] == 120
        rows = await spool.calls(limit=500)
        assert sorted(r.id for r in rows) == sorted(ex.id for ex in exchanges)
        for ex in exchanges[::17]:
            assert await spool.get(ex.id) == ex
        await spool.run(assert_refs_exact)
    finally:
        await spool.close()


async def test_closed_async_spool_refuses_work_and_closes_once(tmp_path: Path) -> None:
    spool = await AsyncSpool.open(tmp_path / "spool.sqlite3")
    pending = [asyncio.ensure_future(spool.add(make_exchange(n))) for n in range(10)]
    await asyncio.sleep(0)  # let every task hand its add to the worker
    await spool.close()
    await asyncio.gather(*pending)  # queued before close, so they committed first
    await spool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await spool.counters()
    reopened = await AsyncSpool.open(tmp_path / "spool.sqlite3")
    try:
        assert (await reopened.counters())["calls"] == 10
    finally:
        await reopened.close()


async def test_open_failure_surfaces_the_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        await AsyncSpool.open(blocker / "spool.sqlite3")


def test_the_wal_is_cut_back_after_a_burst(tmp_path: Path) -> None:
    from opik_cipx.store.spool import WAL_LIMIT_BYTES, connect

    path = tmp_path / "spool.sqlite3"
    spool = Spool(connect(path))
    reader = connect(path)  # a long read (a report, the viewer) keeps checkpoints from resetting the WAL
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM exchanges").fetchone()
    for i in range(60):  # ~24 MB of new content: the WAL grows well past the limit
        spool.add(make_exchange(i, request_body=os.urandom(200_000).hex().encode()))
    wal = path.with_name(path.name + "-wal")
    grown = wal.stat().st_size
    reader.execute("COMMIT")
    reader.close()
    spool.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    spool.add(make_exchange(999))  # the first write after a full checkpoint resets the WAL
    assert grown > 2 * WAL_LIMIT_BYTES and wal.stat().st_size <= WAL_LIMIT_BYTES, (grown, wal.stat().st_size)
    spool.close()

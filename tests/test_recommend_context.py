"""cold_cache, long_context and compaction, priced from usage rows alone (no sockets, no spool)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from opik_cipx.model import Usage
from opik_cipx.pricing import PriceTable
from opik_cipx.report import recommend_context as rc

PRICES = PriceTable.builtin()
T0 = 1_780_000_000.0  # 2026-05-28
SONNET = "claude-sonnet-4-5-20250929"


def call(i: int, at: float, *, read: int = 0, write: int = 0, fresh: int = 10, out: int = 50, kind: str = "main",
         agent: str | None = None, write_1h: int | None = None, session: str = "s1", model: str = SONNET) -> rc.Call:
    usage = Usage(input_tokens=fresh, output_tokens=out, cache_creation_input_tokens=write,
                  cache_read_input_tokens=read, cache_creation_1h=write_1h,
                  cache_creation_5m=None if write_1h is None else write - write_1h)
    cost = PRICES.price(model, usage, at=at)
    data: dict[str, Any] = {"parts": cost.parts, "long_context": cost.long_context}
    return rc.Call(f"id{i:03d}", at, session, agent, kind, model, usage, cost.total_usd, data)


def rates(at: float = T0, prompt: int = 0) -> Any:
    r = PRICES.rates(SONNET, at=at, prompt_tokens=prompt)
    assert r is not None
    return r


def cold(calls: list[rc.Call]) -> rc.Recommendation | None:
    acc = rc._Cold()
    rc._cold_session(calls, PRICES, acc)
    return rc._cold_recommendation(acc)


def test_a_rewrite_after_an_idle_gap_is_priced_against_a_one_hour_ttl() -> None:
    calls = [call(0, T0, write=20_000), call(1, T0 + 60, read=20_000, write=800),
             call(2, T0 + 60 + 900, read=0, write=21_000)]  # 15 minutes idle: the cache expired
    rec = cold(calls)
    assert rec is not None and rec.kind == "cold_cache" and rec.evidence == ["id002"] and rec.calls_present == 1
    r = rates()
    redo = 20_800  # what call 1 had cached, none of it read again
    assert rec.tokens == redo
    assert rec.detail["rewrite_cost_usd"] == pytest.approx(redo * r.cache_write_5m)
    premium = (20_000 + 800 + 200) * (r.cache_write_1h - r.cache_write_5m)  # every other write at 2x
    assert rec.detail["ttl_1h_cost_usd"] == pytest.approx(redo * r.cache_read + premium)
    assert rec.saving_usd == pytest.approx(redo * (r.cache_write_5m - r.cache_read) - premium)
    assert rec.saving_usd > 0 and "ENABLE_PROMPT_CACHING_1H" in rec.action
    assert rec.detail["median_gap_s"] == 900.0


def test_gaps_under_five_minutes_and_one_hour_writes_are_not_cold() -> None:
    assert cold([call(0, T0, write=20_000), call(1, T0 + 299, read=0, write=20_000)]) is None
    hour = [call(0, T0, write=20_000, write_1h=20_000), call(1, T0 + 1800, read=0, write=20_000, write_1h=20_000)]
    assert cold(hour) is None
    # A small re-write is not an expired prefix (below the smallest cacheable prompt).
    assert cold([call(0, T0, write=900), call(1, T0 + 900, write=900)]) is None


def test_subagents_and_side_calls_keep_their_own_prefix() -> None:
    calls = [call(0, T0, write=20_000), call(1, T0 + 400, write=5_000, agent="a1"),
             call(2, T0 + 500, write=3_000, kind="title"), call(3, T0 + 200, read=20_000, write=100)]
    assert cold(sorted(calls, key=lambda c: c.started_at)) is None


def test_when_a_one_hour_ttl_would_cost_more_the_saving_is_zero_and_the_action_says_so() -> None:
    # Many big writes, one small expired re-write past an hour: the 2x premium outweighs it.
    calls = [call(i, T0 + 60 * i, read=10_000 * i, write=10_000) for i in range(10)]
    calls.append(call(10, T0 + 600 + 4000, read=95_000, write=2_000))
    rec = cold(calls)
    assert rec is not None and rec.saving_usd == 0.0 and "would cost more" in rec.action
    assert rec.detail["ttl_1h_cost_usd"] > rec.detail["rewrite_cost_usd"]


def test_long_context_premium_is_the_tier_cost_minus_the_base_rates() -> None:
    big = call(0, T0, read=250_000, write=5_000, fresh=100, out=2_000)
    small = call(1, T0 + 10, read=100_000, write=1_000, session="s2")
    assert big.cost["long_context"] and not small.cost["long_context"]
    acc = rc._Long()
    rc._long_session([big], PRICES, acc)
    rc._long_session([small], PRICES, acc)
    rec = rc._long_recommendation(acc)
    assert rec is not None and rec.evidence == ["id000"] and rec.uses == 1
    r = rates()
    base = 100 * r.input + 5_000 * r.cache_write_5m + 250_000 * r.cache_read + 2_000 * r.output
    assert big.cost_usd is not None
    assert rec.saving_usd == pytest.approx(big.cost_usd - base) and rec.saving_usd > 0
    assert "autoCompactWindow" in rec.action


def test_a_compaction_is_what_it_cost_against_what_its_cut_saved_on_the_calls_after_it() -> None:
    before = call(0, T0, read=150_000, write=1_000)
    compaction = call(1, T0 + 5, read=150_000, write=0, out=3_000, kind="compaction")
    after = [call(2 + i, T0 + 10 + i, read=20_000 * (i > 0), write=20_000 if i == 0 else 500) for i in range(3)]
    (rec,) = rc.compactions([before, compaction, *after])
    assert rec.kind == "compaction" and rec.evidence == ["id001", "id002"] and rec.calls_present == 3
    cut = compaction.usage.prompt_tokens - after[0].usage.prompt_tokens
    assert rec.tokens == cut > 0
    saved = math.fsum(cut * (c.cost_usd - c.cost["parts"]["output"]) / c.usage.prompt_tokens for c in after)
    assert compaction.cost_usd is not None
    assert rec.detail["saved_usd"] == pytest.approx(saved)
    assert rec.saving_usd == pytest.approx(saved - compaction.cost_usd)
    assert "informational" in rec.action


def test_sessions_never_mix_in_the_stream() -> None:
    import sqlite3

    from opik_cipx.report import stats
    from opik_cipx.store.migrations import migrate

    conn = sqlite3.connect(":memory:")
    migrate(conn)
    for i, (session, at) in enumerate([("b", T0 + 1), ("a", T0 + 2), ("b", T0 + 3), ("a", T0), (None, T0)]):
        conn.execute("INSERT INTO exchanges (id, started_at, kind, method, path, outcome, session_id, usage, cost)"
                     " VALUES (?, ?, 'messages', 'POST', '/v1/messages', 'complete', ?, '{\"input_tokens\": 1}', '{}')",
                     (f"x{i}", at, session))
        conn.execute("INSERT INTO attribution (exchange_id, call_kind, body_bytes, unattributed_bytes,"
                     " messages_bytes, summary) VALUES (?, 'main', 0, 0, 0, '{}')", (f"x{i}",))
    got = [[c.id for c in s] for s in rc.sessions(conn, stats.window())]
    assert sorted(got) == sorted([["x3", "x1"], ["x0", "x2"], ["x4"]])

"""``opik-cipx stats``: every figure checked against sums computed independently from the spool."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.attribute.analysis import analyze
from opik_cipx.cli import main
from opik_cipx.config import Settings
from opik_cipx.model import CallKind, Cost, Exchange, Usage
from opik_cipx.pricing import PriceTable
from opik_cipx.report import stats
from opik_cipx.server import Gateway
from opik_cipx.store.spool import Spool, connect
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.replay import FIXTURES, replay

SCENARIOS = ("haiku", "sonnet")


def stored_exchanges(sp: Spool) -> list[Exchange]:
    rows = sp.calls(limit=10_000)
    out = [sp.get(r.id) for r in rows]
    assert all(ex is not None for ex in out)
    return [ex for ex in out if ex is not None]


def recorded_cwd(scenario: str) -> str:
    body = (FIXTURES / scenario / "00-prompt.json").read_bytes()
    match = re.search(rb"Primary working directory: (/[^\\\"]+)", body)
    assert match is not None
    return match.group(1).decode()


@pytest.fixture
async def filled(gateway: Gateway, upstream: FakeAnthropic) -> tuple[Gateway, list[Exchange]]:
    for scenario in SCENARIOS:
        await replay(gateway, scenario)
    assert gateway.spool is not None
    exchanges = await gateway.spool.run(stored_exchanges)
    return gateway, exchanges


def readonly(gw: Gateway) -> Any:
    return stats.open_readonly(gw.settings.spool_path)


async def test_totals_match_the_sum_of_stored_usage_and_cost(filled: tuple[Gateway, list[Exchange]]) -> None:
    gw, exchanges = filled
    llm = [ex for ex in exchanges if ex.kind is CallKind.MESSAGES]
    assert len(llm) == 20
    conn = readonly(gw)
    t = stats.totals(conn, stats.window())
    assert t.calls == len(llm) and t.requests == len(exchanges)
    assert t.input_tokens == sum(ex.usage.input_tokens for ex in llm if ex.usage)
    assert t.cache_read_tokens == sum(ex.usage.cache_read_input_tokens for ex in llm if ex.usage)
    assert t.cache_write_tokens == sum(ex.usage.cache_creation_input_tokens for ex in llm if ex.usage)
    assert t.output_tokens == sum(ex.usage.output_tokens for ex in llm if ex.usage)
    cost = sum(ex.cost.total_usd for ex in llm if ex.cost and ex.cost.total_usd is not None)
    assert cost > 0 and t.cost_usd == pytest.approx(cost, rel=1e-9)
    prompt = t.input_tokens + t.cache_read_tokens + t.cache_write_tokens
    assert t.cache_read_tokens > 0 and t.cache_hit_rate == pytest.approx(t.cache_read_tokens / prompt)


async def test_by_model_and_session_partition_the_totals(filled: tuple[Gateway, list[Exchange]]) -> None:
    gw, exchanges = filled
    conn = readonly(gw)
    win = stats.window()
    expected: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sessions: dict[str, int] = defaultdict(int)
    for ex in exchanges:
        if ex.kind is not CallKind.MESSAGES or ex.usage is None:
            continue
        e = expected[ex.model or "(unknown)"]
        e["calls"] += 1
        e["output"] += ex.usage.output_tokens
        e["cache_read"] += ex.usage.cache_read_input_tokens
        e["cost"] += ex.cost.total_usd or 0.0 if ex.cost else 0.0
        sessions[ex.session_id or stats.NO_SESSION] += 1
    by_model = {g.key: g for g in stats.groups(conn, win, "model")}
    assert set(by_model) == set(expected) and len(by_model) == 2
    for model, e in expected.items():
        g = by_model[model]
        assert (g.calls, g.output_tokens, g.cache_read_tokens) == (e["calls"], e["output"], e["cache_read"])
        assert g.cost_usd == pytest.approx(e["cost"], rel=1e-9)
    by_session = {g.key: g.calls for g in stats.groups(conn, win, "session")}
    assert by_session == dict(sessions)
    costs = [g.cost_usd for g in stats.groups(conn, win, "model")]
    assert costs == sorted(costs, reverse=True)


async def test_by_category_equals_the_attribution_of_every_call(filled: tuple[Gateway, list[Exchange]]) -> None:
    gw, exchanges = filled
    prices = PriceTable.builtin()
    expected_tokens: dict[str, int] = defaultdict(int)
    expected_bytes: dict[str, int] = defaultdict(int)
    expected_cost: dict[str, float] = defaultdict(float)
    servers: dict[str, int] = defaultdict(int)
    for ex in exchanges:
        if ex.kind is not CallKind.MESSAGES:
            continue
        attr = analyze(ex, prices)
        for name, total in attr.categories.items():
            expected_tokens[name] += total.tokens
            expected_bytes[name] += total.bytes
            expected_cost[name] += total.cost_usd or 0.0
        for out in attr.output_items:
            expected_tokens[out.category] += out.tokens
            expected_bytes[out.category] += out.bytes
            expected_cost[out.category] += out.cost_usd or 0.0
        for item in attr.items:
            if item.category == "mcp":
                servers[item.detail.get("server") or "(shared)"] += item.tokens
    conn = readonly(gw)
    groups = {g.key: g for g in stats.groups(conn, stats.window(), "category")}
    nonzero = {k for k, v in expected_tokens.items() if v or expected_bytes[k]}
    assert nonzero <= set(groups) and {"system", "mcp", "output"} <= set(groups)
    for name in nonzero:
        assert groups[name].tokens == expected_tokens[name], name
        assert groups[name].bytes == expected_bytes[name], name
        assert groups[name].cost_usd == pytest.approx(expected_cost[name], rel=1e-9, abs=1e-12), name
    # Categories share out each call's cost, so together they are the total cost.
    total = stats.totals(conn, stats.window())
    assert sum(g.cost_usd for g in groups.values()) == pytest.approx(total.cost_usd, rel=1e-9)
    mcp = {g.key: g.tokens for g in stats.groups(conn, stats.window(), "mcp")}
    assert "acme_tools" in mcp
    assert mcp == {k: v for k, v in servers.items() if k in mcp}
    assert sum(mcp.values()) == groups["mcp"].tokens


async def test_by_project_reads_the_cwd_claude_code_announced(filled: tuple[Gateway, list[Exchange]]) -> None:
    gw, _ = filled
    conn = readonly(gw)
    projects = {g.key: g.calls for g in stats.groups(conn, stats.window(), "project")}
    assert projects == {recorded_cwd(s): 10 for s in SCENARIOS}


def _exchange(i: int, at: float, *, model: str = "claude-sonnet-4-5", cost: float | None = 0.01) -> Exchange:
    return Exchange(
        id=f"{i:032x}", started_at=at, method="POST", path="/v1/messages", kind=CallKind.MESSAGES,
        request_body=b'{"model":"%s","messages":[]}' % model.encode(), status=200, session_id=f"s-{i % 2}",
        model=model, usage=Usage(input_tokens=100 + i, output_tokens=10, cache_read_input_tokens=50),
        cost=Cost(total_usd=cost),
    )


def test_windows_select_calls_by_time(tmp_path: Path) -> None:
    now = time.time()
    spool = Spool(connect(tmp_path / "s.sqlite3"))
    ages = [0.5, 2, 10, 40]  # days
    for i, days in enumerate(ages):
        spool.add(_exchange(i, now - days * 86400))
    conn = spool.conn
    assert stats.totals(conn, stats.window("week", now=now)).calls == 2
    assert stats.totals(conn, stats.window("month", now=now)).calls == 3
    assert stats.totals(conn, stats.window(since="3d", now=now)).calls == 2
    assert stats.totals(conn, stats.window(since="12h", now=now)).calls == 1
    assert stats.totals(conn, stats.window(now=now)).calls == 4
    day = datetime.fromtimestamp(now - 40 * 86400).date().isoformat()
    assert stats.totals(conn, stats.window(since=day, now=now)).calls == 4
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    assert stats.window("today", now=now).since == midnight
    days = stats.groups(conn, stats.window(now=now), "day")
    assert [g.key for g in days] == sorted(g.key for g in days) and sum(g.calls for g in days) == 4
    for bad in ("yesterday", "3 parsecs"):
        with pytest.raises(stats.StatsError):
            stats.window(since=bad) if " " in bad else stats.window(bad)
    with pytest.raises(stats.StatsError):
        stats.window("week", "3d")


def test_unknown_prices_are_counted_not_zeroed(tmp_path: Path) -> None:
    spool = Spool(connect(tmp_path / "s.sqlite3"))
    spool.add(_exchange(1, time.time(), cost=0.5))
    spool.add(_exchange(2, time.time(), model="mystery-model", cost=None))
    t = stats.totals(spool.conn, stats.window())
    assert t.cost_usd == pytest.approx(0.5) and t.unknown_cost_calls == 1
    assert "no known price" in stats.render_text(stats.report(spool.conn, stats.window()))


def test_cli_works_with_the_gateway_down_and_leaves_the_spool_untouched(
    make_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings: Settings = make_settings()
    settings.spool_path.parent.mkdir(parents=True)
    spool = Spool(connect(settings.spool_path))
    now = time.time()
    for i in range(5):
        spool.add(_exchange(i, now - i * 60))
    spool.close()
    before = settings.spool_path.read_bytes()
    assert main(["stats", "today", "--by", "model", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["calls"] == 5 and doc["by"] == "model"
    assert doc["totals"]["input_tokens"] == sum(100 + i for i in range(5))
    assert doc["groups"][0]["key"] == "claude-sonnet-4-5"
    assert doc["totals"]["cost_usd"] == pytest.approx(0.05)
    assert main(["stats", "--by", "session"]) == 0
    text = capsys.readouterr().out
    assert "LLM calls" in text and "s-0" in text and "s-1" in text and "cache-hit rate" in text
    assert settings.spool_path.read_bytes() == before


def test_cli_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats"]) == 1
    assert "has not captured anything yet" in capsys.readouterr().err
    assert main(["stats", "--since", "whenever"]) == 1
    assert "cannot read --since" in capsys.readouterr().err


def test_an_unpriced_model_costs_unknown_by_model_never_zero(tmp_path: Path) -> None:
    spool = Spool(connect(tmp_path / "s.sqlite3"))
    spool.add(_exchange(1, time.time(), cost=0.5))
    spool.add(_exchange(2, time.time(), model="mystery-model", cost=None))
    rep = stats.report(spool.conn, stats.window(), "model")
    row = next(line for line in stats.render_text(rep).splitlines() if "mystery-model" in line)
    assert row.rstrip().endswith("unknown") and "$0.0000" not in row
    groups = {g["key"]: g for g in stats.to_json(rep)["groups"]}
    assert groups["mystery-model"]["cost_usd"] is None and groups["claude-sonnet-4-5"]["cost_usd"] == pytest.approx(0.5)


def test_a_date_or_an_age_works_as_the_window_argument(tmp_path: Path) -> None:
    now = time.time()
    day = datetime.fromtimestamp(now - 86400).date().isoformat()
    assert stats.window(day, now=now) == stats.window(since=day, now=now)
    assert stats.window("3d", now=now) == stats.window(since="3d", now=now)
    with pytest.raises(stats.StatsError, match="a date like"):
        stats.window("yesterday")

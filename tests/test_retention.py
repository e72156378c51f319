"""Retention: bodies of old calls go, their totals stay, unshipped calls are never touched,
the cap is honoured oldest first and the file really shrinks. Months are simulated with an
injected clock over calls recorded from the real Claude Code CLI."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.attribute.analysis import analyze, response_content
from opik_cipx.model import Exchange
from opik_cipx.report import insights, stats
from opik_cipx.report.explain import ExplainError, write
from opik_cipx.ship.outbox import NO_DESTINATION, QUEUED, Outbox
from opik_cipx.store import attribution as attribution_store
from opik_cipx.store import retention
from opik_cipx.store.retention import Candidate, Policy, plan, prune
from opik_cipx.store.spool import BodyPruned, Spool, connect
from tests.support.exchanges import PRICES, make_exchange
from tests.support.replay import FIXTURES
from tests.test_spool import assert_refs_exact

DAY = 86400.0
NOW = 1_790_000_000.0  # the injected "today"
SCENARIOS = ("haiku", "sonnet", "opus")


def labels(scenario: str) -> list[str]:
    return [p.stem.split("-", 1)[1] for p in sorted((FIXTURES / scenario).glob("[0-9][0-9]-*.json"))
            if not p.name.endswith(".meta.json")]


def store(sp: Spool, ex: Exchange, mark: str | None = NO_DESTINATION) -> None:
    """As capture stores a call: the exchange, its attribution and its ship mark (with no
    destination configured, the span stage marks every LLM call ``no_destination``)."""
    sp.add(ex)
    attribution_store.save(sp.conn, ex.id, analyze(ex, PRICES, response_content(ex)))
    if mark is not None:
        Outbox(sp.conn).mark(ex.id, mark)


def months_of_sessions(sp: Spool, *, months: int = 6, mark: str | None = NO_DESTINATION) -> list[Exchange]:
    """One copy of each recorded session per month, the newest this week; bodies repeat across
    copies, so old and new calls share chunks (refcounts must keep the shared ones)."""
    out: list[Exchange] = []
    rng = random.Random(months)
    for month in range(months):
        for scenario in SCENARIOS:
            base = NOW - (month * 30 + 2) * DAY
            for i, label in enumerate(labels(scenario)):
                # Each answer is its own (as real answers are): pruning old calls frees their blobs.
                reply = [{"type": "text", "text": f"MARKER_REPLY {month} {i} " + rng.randbytes(12_000).hex()}]
                ex = make_exchange(scenario, label, started_at=base + i * 60, ex_id=f"m{month}-{scenario}-{i:02d}",
                                   content=reply)
                ex.session_id = f"{ex.session_id}-m{month}"
                store(sp, ex, mark)
                out.append(ex)
    return out


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.sqlite3"


@pytest.fixture
def spool(spool_path: Path) -> Iterator[Spool]:
    sp = Spool(connect(spool_path))
    yield sp
    sp.close()


def everything_stats_shows(conn: sqlite3.Connection) -> str:
    whole = stats.Window("all", None)
    parts = [stats.dumps(stats.report(conn, whole, by)) for by in (None, *stats.GROUPS)]
    found = insights.insights(conn, stats.Window("month", NOW - 200 * DAY), NOW)
    return json.dumps([*parts, insights.dumps(found)])


# --- the pure selection ---------------------------------------------------------------------


def test_plan_prunes_past_the_age_oldest_first_and_never_an_unshipped_call() -> None:
    calls = [
        Candidate("new", NOW - 1 * DAY, unshipped=False),
        Candidate("old-b", NOW - 100 * DAY, unshipped=False),
        Candidate("old-a", NOW - 200 * DAY, unshipped=False),
        Candidate("old-unshipped", NOW - 300 * DAY, unshipped=True),
        Candidate("edge", NOW - 90 * DAY, unshipped=False),  # exactly 90 days: not yet past
    ]
    chosen = plan(calls, NOW, Policy(days=90))
    assert [c.id for c in chosen.by_age] == ["old-a", "old-b"]
    assert chosen.by_size == []
    assert chosen.kept_unshipped == 1
    # The clock decides: 200 days later everything shipped is past retention.
    later = plan(calls, NOW + 200 * DAY, Policy(days=90))
    assert [c.id for c in later.by_age] == ["old-a", "old-b", "edge", "new"]


def test_plan_for_the_cap_orders_the_rest_oldest_first_and_days_zero_keeps_forever() -> None:
    calls = [Candidate(f"c{i}", NOW - i * DAY, unshipped=(i == 3)) for i in range(6)]
    chosen = plan(calls, NOW, Policy(days=0, max_bytes=1))
    assert chosen.by_age == []
    assert [c.id for c in chosen.by_size] == ["c5", "c4", "c2", "c1", "c0"]
    assert chosen.unshipped == 1
    assert not Policy(days=0, max_bytes=0).enabled
    assert plan(calls, NOW, Policy(days=0)).by_age == []


def test_kept_prefix_stops_at_the_chunk_naming_the_working_directory() -> None:
    chunks = [b"x" * 100, b"...Primary wor", b"king directory: /home/ada/proj\\n", b"y" * 100]
    assert retention.kept_prefix(chunks) == 3  # the match spans a chunk boundary
    assert retention.kept_prefix([b"nothing here"] * 3) == 0
    assert retention.kept_prefix([b"z" * 10, b"Working directory: /w"], limit=5) == 0


# --- pruning the spool ------------------------------------------------------------------------


def test_pruning_keeps_every_figure_of_stats_and_insights(spool: Spool, spool_path: Path) -> None:
    calls = months_of_sessions(spool)
    before = everything_stats_shows(spool.conn)
    result = prune(spool.conn, Policy(days=90), NOW, path=spool_path)
    old = [ex for ex in calls if ex.started_at < NOW - 90 * DAY]
    assert result.by_age == len(old) > 0
    assert everything_stats_shows(spool.conn) == before
    assert_refs_exact(spool)
    for ex in calls:
        if ex in old:
            with pytest.raises(BodyPruned):
                spool.get(ex.id)
        else:  # kept calls share chunks with the pruned copies: every byte is still there
            got = spool.get(ex.id)
            assert got is not None and got.request_body == ex.request_body
            assert got.response_body == ex.response_body
    # A second run at the same moment finds nothing more to do.
    assert prune(spool.conn, Policy(days=90), NOW).pruned == 0


def test_calls_not_yet_shipped_to_a_configured_opik_are_never_pruned(spool: Spool) -> None:
    calls = months_of_sessions(spool, mark=None)
    old = sorted((ex for ex in calls if ex.started_at < NOW - 90 * DAY), key=lambda e: e.started_at)
    outbox = Outbox(spool.conn)
    waiting = old[0]  # derived, its records still in the outbox
    spool.conn.execute("INSERT INTO ship_marks VALUES (?, ?, ?)", (waiting.id, QUEUED, NOW))
    outbox.put("span", {"id": "span-1", "name": "x"}, exchange_id=waiting.id)
    shipped = old[1]  # derived and acknowledged: no outbox row left
    spool.conn.execute("INSERT INTO ship_marks VALUES (?, ?, ?)", (shipped.id, QUEUED, NOW))

    result = prune(spool.conn, Policy(days=90), NOW)
    assert result.pruned == 1  # only the shipped one; the unmarked calls await recovery
    assert result.kept_unshipped == len(old) - 1
    with pytest.raises(BodyPruned):
        spool.get(shipped.id)
    assert spool.get(waiting.id) is not None
    # Not even a cap nothing else can meet takes them: it is reported instead.
    result = prune(spool.conn, Policy(days=90, max_bytes=1), NOW)
    assert result.over_cap and result.kept_unshipped == len(calls) - 1
    assert spool.get(waiting.id) is not None
    assert retention.footprint(spool.conn)["last_prune"]["over_cap"]
    # Once Opik has them (marked, outbox empty), they go like any other.
    spool.conn.execute("DELETE FROM outbox")
    for ex in calls:
        spool.conn.execute("INSERT OR IGNORE INTO ship_marks VALUES (?, ?, ?)", (ex.id, QUEUED, NOW))
    assert prune(spool.conn, Policy(days=90), NOW).pruned == len(old) - 1


def test_the_file_actually_shrinks_after_pruning(spool: Spool, spool_path: Path) -> None:
    months_of_sessions(spool, months=8)
    spool.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = retention.file_bytes(spool_path)
    assert spool.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # an existing file, as shipped
    result = prune(spool.conn, Policy(days=45), NOW, path=spool_path)
    assert result.vacuumed and spool.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert result.bytes_before == before
    # Bodies of 7 of the 8 copies go; what they share with the newest copy stays.
    assert result.bytes_after < before * 0.75, (before, result.bytes_after)
    assert retention.file_bytes(spool_path) <= result.bytes_after + 16 * 1024  # + the run's own log row
    assert spool.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0


def test_the_cap_is_honoured_oldest_first(spool: Spool, spool_path: Path) -> None:
    calls = months_of_sessions(spool, months=6)
    # Half of what the bodies take: a cap pruning can meet (the totals it keeps take the rest).
    blobs = spool.conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'blobs'").fetchone()[0]
    cap = retention.live_bytes(spool.conn) - blobs // 2
    result = prune(spool.conn, Policy(days=0, max_bytes=cap), NOW, path=spool_path)
    assert result.by_age == 0 and result.by_size > 0 and not result.over_cap
    assert retention.live_bytes(spool.conn) <= cap
    assert result.bytes_after <= cap + 64 * 1024  # the file follows (a few pages of slack)
    pruned = {r[0] for r in spool.conn.execute("SELECT id FROM exchanges WHERE body_pruned_at IS NOT NULL")}
    kept = [ex for ex in calls if ex.id not in pruned]
    assert len(calls) / 4 < len(kept) < len(calls) * 3 / 4, "it stops near the cap, not after pruning everything"
    assert max(ex.started_at for ex in calls if ex.id in pruned) <= min(ex.started_at for ex in kept)
    assert_refs_exact(spool)


def test_a_pruned_call_stored_again_has_its_body_back(spool: Spool) -> None:
    ex = make_exchange("haiku", "prompt", started_at=NOW - 400 * DAY, ex_id="again")
    store(spool, ex)
    prune(spool.conn, Policy(days=90), NOW)
    with pytest.raises(BodyPruned):
        spool.get("again")
    spool.add(ex)  # e.g. a journal replay of the same call
    got = spool.get("again")
    assert got is not None and got.request_body == ex.request_body
    assert_refs_exact(spool)


def test_a_sessions_first_call_keeps_the_chunks_that_name_its_project(spool: Spool) -> None:
    months_of_sessions(spool, months=3)
    projects = stats.session_projects(spool.conn, stats.Window("all", None))
    prune(spool.conn, Policy(days=1), NOW + 365 * DAY)
    assert spool.conn.execute("SELECT count(*) FROM exchanges WHERE body_pruned_at IS NULL").fetchone()[0] == 0
    assert stats.session_projects(spool.conn, stats.Window("all", None)) == projects
    assert "(unknown)" not in projects.values()


def test_explain_says_plainly_that_retention_pruned_the_body(spool: Spool) -> None:
    import io

    ex = make_exchange("sonnet", "prompt", started_at=NOW - 100 * DAY, ex_id="gone")
    store(spool, ex)
    prune(spool.conn, Policy(days=90), NOW)
    out = io.StringIO()
    write(spool, PRICES, ["gone"], out, as_json=False)
    text = out.getvalue()
    assert "pruned by retention" in text and "CIPX_RETENTION_DAYS" in text
    assert f"{ex.cost.total_usd:,.4f}" in text  # type: ignore[union-attr]
    out = io.StringIO()
    write(spool, PRICES, ["gone"], out, as_json=True)
    doc = json.loads(out.getvalue())[0]
    assert doc["body_pruned_at"] == NOW and doc["regions"] == []
    assert doc["categories"] == attribution_store.load(spool.conn, "gone")["categories"]  # type: ignore[index]
    assert not isinstance(ExplainError, type(None))


def test_footprint_names_the_oldest_kept_body_and_the_last_run(spool: Spool) -> None:
    calls = months_of_sessions(spool, months=4)
    prune(spool.conn, Policy(days=60), NOW)
    doc = retention.footprint(spool.conn)
    kept = [ex.started_at for ex in calls if ex.started_at >= NOW - 60 * DAY]
    assert doc["oldest_body_at"] == min(kept)
    assert doc["pruned_calls"] == len(calls) - len(kept)
    assert doc["last_prune"]["pruned"] == len(calls) - len(kept)


def test_the_background_task_prunes_on_the_injected_clock(spool: Spool, spool_path: Path) -> None:
    ex = make_exchange("haiku", "prompt", started_at=NOW - 10 * DAY, ex_id="ten-days")
    store(spool, ex)
    clock = [NOW]
    busy = [True]

    async def main() -> retention.RetentionTask:
        async with asyncio.timeout(60):
            return await steps()

    async def steps() -> retention.RetentionTask:
        task = retention.RetentionTask(spool_path, Policy(days=30), busy=lambda: busy[0], clock=lambda: clock[0],
                                       first_delay=0.0, interval=0.05)
        runner = asyncio.create_task(task.run())
        await asyncio.sleep(0.2)
        assert task.runs == 0  # the proxy is busy: retention waits for a lull
        busy[0] = False
        while task.runs < 1:  # noqa: ASYNC110 - polling the task under test
            await asyncio.sleep(0.02)
        assert task.last is not None and task.last.pruned == 0  # ten days old: kept
        clock[0] = NOW + 30 * DAY
        while task.last is None or task.last.pruned == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        return task

    asyncio.run(main())
    with pytest.raises(BodyPruned):
        spool.get("ten-days")


def test_status_of_a_stopped_gateway_still_shows_the_spool_and_its_oldest_kept_body(make_settings: Any) -> None:
    from opik_cipx.ops.status import STATUS_DOWN, collect_status, render_status

    settings = make_settings(retention_days=30, spool_max_mb=0)
    sp = Spool(connect(settings.spool_path))
    try:
        calls = months_of_sessions(sp, months=2)
        prune(sp.conn, Policy(days=30), NOW)
    finally:
        sp.close()
    code, doc = collect_status(settings, timeout=1.0)
    assert code == STATUS_DOWN
    kept = min(ex.started_at for ex in calls if ex.started_at >= NOW - 30 * DAY)
    assert doc["spool"]["oldest_body_at"] == kept and doc["spool"]["bytes"] > 0
    assert doc["retention"] == {"days": 30, "max_mb": 0}
    text = render_status(code, doc)
    assert "opik-cipx: not running" in text and "bodies kept 30 days; oldest kept body " in text
    assert f"{len(calls) // 2} calls pruned (totals kept)" in text


async def test_the_gateway_runs_retention_in_the_background_with_its_settings(
    upstream: Any, make_settings: Any
) -> None:
    from opik_cipx.server import Gateway

    async with Gateway(make_settings(upstream_url=upstream.url, spool_max_mb=64)) as gw:
        assert gw.retention is not None
        assert gw.retention.policy == Policy(days=90, max_bytes=64 * 1024**2)
        assert any(t.get_name() == "cipx-retention" and not t.done() for t in gw._tasks)
    async with Gateway(make_settings(upstream_url=upstream.url, retention_days=0)) as gw:
        assert gw.retention is None  # nothing to prune: no task at all


def test_the_viewer_shows_a_pruned_call_from_its_kept_totals(spool: Spool) -> None:
    from opik_cipx.viewer import queries

    ex = make_exchange("haiku", "prompt", started_at=NOW - 100 * DAY, ex_id="old-one")
    store(spool, ex)
    prune(spool.conn, Policy(days=90), NOW)
    detail = json.loads(queries.call_detail(spool, "old-one", PRICES) or b"null")
    assert detail["body_pruned_at"] == NOW and detail["regions"] == []
    assert detail["cost_usd"] == ex.cost.total_usd  # type: ignore[union-attr]
    assert queries.request_body(spool, "old-one") == b""  # no bytes kept; the page says why
    assert queries.reattribute(spool, "old-one", PRICES) is None


def test_a_call_queued_for_opik_after_selection_is_still_kept(spool: Spool) -> None:
    ex = make_exchange("haiku", "prompt", started_at=NOW - 200 * DAY, ex_id="raced")
    store(spool, ex)
    chosen = plan(retention.candidates(spool.conn), NOW, Policy(days=90))
    assert [c.id for c in chosen.by_age] == ["raced"]
    # Between the selection and the pruning transaction, a re-ship queued its records again.
    Outbox(spool.conn).put("span", {"id": "span-raced", "name": "x"}, exchange_id="raced")
    assert retention._prune_batch(spool.conn, ["raced"], NOW) == 0
    assert spool.get("raced") is not None

"""``opik-cipx replay``: stored captures derived again with today's rules, idempotently, with the
same span ids on a re-ship; pruned bodies skipped and counted. The spool is filled through the
real capture chain from requests recorded from the real Claude Code CLI."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.capture import replay
from opik_cipx.capture.pipeline import capture_chain
from opik_cipx.capture.stages import Failure, store_batch
from opik_cipx.cli import main
from opik_cipx.config import Settings
from opik_cipx.model import Exchange, Outcome
from opik_cipx.pricing import PriceTable
from opik_cipx.store.retention import Policy, prune
from opik_cipx.store.spool import Spool, connect
from tests.support.exchanges import PRICES, T0, assistant_blocks, make_exchange
from tests.support.replay import FIXTURES

SCENARIOS = ("haiku", "sonnet")
DAY = 86400.0


def labels(scenario: str) -> list[str]:
    return [p.stem.split("-", 1)[1] for p in sorted((FIXTURES / scenario).glob("[0-9][0-9]-*.json"))
            if not p.name.endswith(".meta.json")]


def session_calls(scenario: str, start: float) -> list[Exchange]:
    """A recorded session, each call answered with the assistant turn the next request echoes,
    so tool calls open sub-spans and the next call's results close them."""
    names = labels(scenario)
    out = []
    for i, label in enumerate(names):
        try:
            content = assistant_blocks(scenario, names[i + 1]) if i + 1 < len(names) else None
        except IndexError:  # the next request starts a conversation of its own (a title, a subagent)
            content = None
        out.append(make_exchange(scenario, label, content=content, started_at=start + i * 30,
                                 ex_id=f"{scenario}-{i:02d}"))
    return out


def capture(settings: Settings, spool: Spool, calls: list[Exchange]) -> None:
    """Store the calls exactly as the gateway's capture chain does (spans queued too)."""
    chain = capture_chain(settings, lambda: PRICES, lambda: None)
    failures: list[Failure] = []
    done = store_batch(spool, [replay.recorder_from(ex) for ex in calls], chain.build, chain.stages, failures)
    assert failures == [] and len(done) == len(calls)


def dump(conn: sqlite3.Connection) -> str:
    """Everything replay may touch, as text, to compare whole spools."""
    tables = {
        "exchanges": "SELECT * FROM exchanges ORDER BY id",
        "attribution": "SELECT * FROM attribution ORDER BY exchange_id",
        "items": "SELECT * FROM attribution_items ORDER BY exchange_id, side, category, item",
        "blobs": "SELECT hash, refs FROM blobs ORDER BY hash",
    }
    return json.dumps({k: [[c.hex() if isinstance(c, bytes) else c for c in r] for r in conn.execute(q)]
                       for k, q in tables.items()})


@pytest.fixture
def settings(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Settings:
    # A destination on a closed loopback port, tracing on: records are queued, nothing is ever sent.
    monkeypatch.setenv("OPIK_CC_TRACING_ENABLED", "true")
    return make_settings(opik_base_url="http://127.0.0.1:9/api")


@pytest.fixture
def spool(settings: Settings) -> Iterator[Spool]:
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    sp = Spool(connect(settings.spool_path))
    yield sp
    sp.close()


@pytest.fixture
def filled(settings: Settings, spool: Spool) -> list[Exchange]:
    calls = [ex for i, s in enumerate(SCENARIOS) for ex in session_calls(s, T0 + i * DAY)]
    capture(settings, spool, calls)
    return calls


def test_a_stored_call_derives_again_to_exactly_what_capture_stored(spool: Spool, filled: list[Exchange]) -> None:
    for ex in filled:
        stored = spool.get(ex.id)
        assert stored is not None
        item = replay.rederive(spool.conn, stored, PRICES)
        assert item.exchange == stored
        assert replay.differences(spool.conn, stored, item) == []


def test_replay_twice_is_replay_once(spool: Spool, filled: list[Exchange], tmp_path: Path) -> None:
    before = dump(spool.conn)
    first = replay.replay(spool, PRICES, replay.select(spool.conn))
    assert (first.replayed, first.changed, first.pruned, first.failed) == (len(filled), 0, 0, 0)
    assert dump(spool.conn) == before  # today's rules, today's prices: nothing to change
    doubled = price_file(tmp_path, 2.0)
    once = replay.replay(spool, doubled, replay.select(spool.conn))
    assert once.changed > 0
    after_once = dump(spool.conn)
    twice = replay.replay(spool, doubled, replay.select(spool.conn))
    assert twice.changed == 0 and twice.replayed == len(filled)
    assert dump(spool.conn) == after_once


def price_file(tmp_path: Path, factor: float) -> PriceTable:
    rates = {"claude-haiku-4-5": (1.0, 5.0), "claude-sonnet-4-5": (3.0, 15.0)}
    text = "".join(f'[models."{m}"]\ninput = {i * factor}\noutput = {o * factor}\n' for m, (i, o) in rates.items())
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    return PriceTable.load(path)


def test_a_changed_price_table_changes_the_stored_costs(spool: Spool, filled: list[Exchange], tmp_path: Path) -> None:
    costs = dict(spool.conn.execute("SELECT id, cost_usd FROM exchanges"))
    item_costs = dict(spool.conn.execute(
        "SELECT exchange_id || category || item || side, cost_usd FROM attribution_items"))
    done = replay.replay(spool, price_file(tmp_path, 2.0), replay.select(spool.conn))
    assert done.changed == len(filled) and done.changes["cost"] == len(filled)
    assert done.changes["attribution"] == len(filled)  # the per-category costs follow
    for exchange_id, cost in spool.conn.execute("SELECT id, cost_usd FROM exchanges"):
        assert cost == pytest.approx(2 * costs[exchange_id]), exchange_id
    for key, cost in spool.conn.execute(
            "SELECT exchange_id || category || item || side, cost_usd FROM attribution_items"):
        if item_costs[key] is not None:
            assert cost == pytest.approx(2 * item_costs[key])
    ex = spool.get(filled[0].id)
    assert ex is not None and ex.cost is not None and ex.cost.note is not None  # names the override


def outbox(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    return {rid: json.loads(payload) for rid, payload in conn.execute("SELECT id, payload FROM outbox")}


def test_reship_queues_every_span_and_trace_again_with_the_same_ids(
    settings: Settings, spool: Spool, filled: list[Exchange]
) -> None:
    shipped = outbox(spool.conn)
    assert any(r.get("type") == "tool" for r in shipped.values()), "the sessions open and close tool spans"
    spool.conn.execute("DELETE FROM outbox")  # as if Opik had acknowledged everything
    table = None
    from opik_cipx.ship.stage import SpanStage

    record = SpanStage(settings, sessions=lambda: table).record
    done = replay.replay(spool, PRICES, replay.select(spool.conn, session=filled[0].session_id), reship=record)
    assert done.reshipped_sessions == 1
    first = {ex.id for ex in filled if ex.session_id == filled[0].session_id}
    assert done.reshipped_calls == len(first)  # only the session asked for
    again = outbox(spool.conn)
    assert any(r.get("type") == "tool" for r in again.values()) and any("trace_id" not in r for r in again.values())
    expected = {rid: r for rid, r in shipped.items()
                if r.get("trace_id", rid) in {r2.get("trace_id") for r2 in again.values()}}
    assert set(again) == set(expected)
    for rid, record_ in again.items():
        old = expected[rid]
        for key in ("trace_id", "parent_span_id", "name", "type", "usage", "total_estimated_cost", "start_time",
                    "end_time"):
            assert record_.get(key) == old.get(key), (rid, key)
    # The trace's totals are rebuilt from the calls, not added on top of the first shipping.
    [trace] = [r for r in again.values() if "trace_id" not in r]
    [old_trace] = [r for r in shipped.values() if r["id"] == trace["id"]]
    assert trace["metadata"]["cc"]["calls"] == old_trace["metadata"]["cc"]["calls"]
    # A second re-ship is the same upsert again.
    replay.replay(spool, PRICES, replay.select(spool.conn, session=filled[0].session_id), reship=record)
    assert set(outbox(spool.conn)) == set(again)


def test_pruned_bodies_are_skipped_and_counted(spool: Spool, filled: list[Exchange]) -> None:
    older = [ex for ex in filled if ex.started_at < T0 + DAY]
    assert prune(spool.conn, Policy(days=1), T0 + 2 * DAY - 1).pruned == 0  # not shipped yet
    spool.conn.execute("DELETE FROM outbox")  # Opik acknowledged everything
    prune(spool.conn, Policy(days=1), T0 + 2 * DAY - 1)
    done = replay.replay(spool, PRICES, replay.select(spool.conn))
    assert done.pruned == len(older) > 0
    assert done.replayed == len(filled) - len(older)
    assert "2 skipped" not in done.line() and f"{len(older)} skipped (body pruned by retention)" in done.line()


def test_the_wire_verdict_and_timings_survive_a_replay(spool: Spool, settings: Settings) -> None:
    ex = make_exchange("haiku", "prompt", ex_id="cut")
    ex.outcome, ex.error, ex.ttfb_ms = Outcome.CLIENT_GONE, "client disconnected", 123.0
    spool.add(ex)
    stored = spool.get("cut")
    assert stored is not None
    item = replay.rederive(spool.conn, stored, PRICES)
    assert item.exchange.outcome is Outcome.CLIENT_GONE and item.exchange.error == "client disconnected"
    assert item.exchange.ttfb_ms == 123.0 and item.exchange.ttft_ms == stored.ttft_ms


def test_the_command_prints_a_summary_and_draws_no_bar_off_a_tty(
    settings: Settings, filled: list[Exchange], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CIPX_HOME", str(settings.home))
    assert main(["replay"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == (f"replay: {len(filled)} of {len(filled)} calls replayed, 0 changed, "
                               "0 skipped (body pruned by retention), 0 failed")
    assert out.err == ""
    assert main(["replay", "--json", "--since", "2000-01-01"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == len(filled)
    assert main(["replay", "--reship"]) == 0  # this shell's configuration names no Opik
    out = capsys.readouterr()
    assert "no Opik destination is configured: replaying without re-shipping" in out.err
    assert "queued for Opik again" not in out.out
    monkeypatch.setenv("OPIK_CIPX_BASE_URL", "http://127.0.0.1:9/api")
    assert main(["replay", "--reship", "--session", filled[0].session_id or ""]) == 0
    assert capsys.readouterr().out.strip().endswith("queued for Opik again")
    assert main(["replay", "--since", "yesterday-ish"]) == 1


def test_the_bar_is_drawn_on_stderr_at_a_tty(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from opik_cipx.cli import reports

    for n in range(1, 51):
        reports._progress(n, 50)
    err = capsys.readouterr().err
    assert err.count("\r") == 2 and err.endswith("[" + "#" * 30 + "] 50/50")


async def test_replay_runs_beside_a_live_gateway(gateway: Any) -> None:
    import asyncio

    import aiohttp

    body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": "k"}) as resp:
            await resp.read()
    assert await gateway.capture.drain(5)
    done = await asyncio.get_running_loop().run_in_executor(None, lambda: replay.run(gateway.settings, PRICES))
    assert (done.replayed, done.failed) == (1, 0)
    async with aiohttp.ClientSession() as client:  # and the gateway still captures
        async with client.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": "k"}) as resp:
            await resp.read()
    assert await gateway.capture.drain(5)
    assert len(await gateway.spool.calls()) == 2


def _codex_call(events: list[dict[str, object]], *, ws: bool = False) -> Any:
    from opik_cipx.proxy.recorder import HeaderList, Recorder

    rec = Recorder("WEBSOCKET" if ws else "POST", "/v1/responses",
                   HeaderList([(b"session-id", b"s-1"), (b"originator", b"codex_exec")]))
    rec.body = json.dumps({"model": "gpt-5.1-codex", "input": [{"role": "user", "content": "hi"}]}).encode()
    rec.response_head(101 if ws else 200, () if ws else ((b"Content-Type", b"text/event-stream"),))
    for e in events:
        rec.chunk(json.dumps(e).encode() if ws else f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
    return rec


@pytest.mark.parametrize("case", ["http", "websocket", "gone-after-completed", "gone-mid-answer"])
def test_codex_calls_derive_again_to_what_capture_stored(spool: Spool, case: str) -> None:
    from opik_cipx.capture.stages import prepare
    from opik_cipx.store import attribution as attribution_store
    from tests.support.fake_responses import Answer, answer_events

    events = answer_events(Answer(), {}, "resp_1", "gpt-5.1-codex")
    rec = _codex_call(events[:-1] if case == "gone-mid-answer" else events, ws=case == "websocket")
    if case.startswith("gone"):
        rec.client_gone("client disconnected")
    rec.finish()
    item = prepare(rec, PRICES)
    spool.add(item.exchange)
    assert item.attribution is not None
    attribution_store.save(spool.conn, item.exchange.id, item.attribution)
    stored = spool.get(item.exchange.id)
    assert stored is not None
    again = replay.rederive(spool.conn, stored, PRICES)
    assert again.exchange == stored
    assert replay.differences(spool.conn, stored, again) == []


async def test_calls_captured_live_over_sse_replay_with_no_change(gateway: Any) -> None:
    import asyncio

    from tests.support.replay import replay as send_recorded

    for scenario in SCENARIOS:
        await send_recorded(gateway, scenario)
    assert await gateway.capture.drain(10)
    rows = await gateway.spool.calls(limit=1000)
    done = await asyncio.get_running_loop().run_in_executor(None, lambda: replay.run(gateway.settings, PRICES))
    assert (done.replayed, done.changed, done.failed) == (len(rows), 0, 0), done.changes


def test_a_session_with_pruned_bodies_is_replayed_but_not_re_shipped(
    settings: Settings, spool: Spool, filled: list[Exchange]
) -> None:
    from opik_cipx.ship.stage import SpanStage

    spool.conn.execute("DELETE FROM outbox")  # shipped
    first = [ex for ex in filled if ex.session_id == filled[0].session_id]
    prune(spool.conn, Policy(days=1), first[1].started_at + DAY + 1)  # the first session's first two calls
    pruned = {r[0] for r in spool.conn.execute("SELECT id FROM exchanges WHERE body_pruned_at IS NOT NULL")}
    assert pruned == {first[0].id, first[1].id}
    record = SpanStage(settings).record
    done = replay.replay(spool, PRICES, replay.select(spool.conn), reship=record)
    assert done.reship_skipped_sessions == 1 and done.reshipped_sessions == len(SCENARIOS) - 1
    assert not any(r.get("metadata", {}).get("cc", {}).get("session_id") == filled[0].session_id
                   for r in outbox(spool.conn).values())
    assert "1 sessions not re-shipped (retention pruned some of their bodies" in done.line()


def test_the_command_draws_its_bar_on_a_terminal(
    settings: Settings, filled: list[Exchange], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setenv("CIPX_HOME", str(settings.home))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["replay"]) == 0
    out = capsys.readouterr()
    assert f"] {len(filled)}/{len(filled)}" in out.err and out.err.endswith("\n")
    assert out.out.startswith(f"replay: {len(filled)} of {len(filled)} calls replayed")


@pytest.mark.parametrize("where", ["top level", "tool input"])
def test_a_speed_setting_derives_again_as_capture_read_it(settings: Settings, spool: Spool, where: str) -> None:
    # Capture takes a Messages call's speed from its walk (the top level only); replay must too.
    import dataclasses

    ex = session_calls("sonnet", T0)[0]
    body = json.loads(ex.request_body)
    if where == "top level":
        body["speed"] = "fast"
    else:
        body["messages"].append({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_s", "name": "Configure", "input": {"speed": "fast"}}]})
    ex = dataclasses.replace(ex, request_body=json.dumps(body).encode())
    capture(settings, spool, [ex])
    stored = spool.get(ex.id)
    assert stored is not None and stored.usage is not None
    assert stored.usage.speed == ("fast" if where == "top level" else None)
    item = replay.rederive(spool.conn, stored, PRICES)
    assert item.exchange == stored and replay.differences(spool.conn, stored, item) == []

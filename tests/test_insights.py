"""``opik-cipx insights``: recommendations and totals checked against the spool's own rows."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from opik_cipx.cli import main
from opik_cipx.report import insights, recommend, stats
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.replay import recorded

# An MCP server listed in every request (its tool schema), whose tool is never called.
SPARE_TOOL = (b'{"name":"mcp__spare_box__ping","description":"Ping the spare box. ' + b"x" * 400
              + b'","input_schema":{"type":"object","properties":{"host":{"type":"string"}}}},')


async def _replay(gw: Gateway, scenario: str, extra_tool: bool, headers: dict[str, str] | None = None) -> None:
    async with aiohttp.ClientSession() as s:
        for _, body, recorded_headers in recorded(scenario):
            if extra_tool:
                assert body.count(b'"tools":[') == 1
                body = body.replace(b'"tools":[', b'"tools":[' + SPARE_TOOL)
            sent = {**recorded_headers, **(headers or {"x-api-key": "sk-ant-test"})}
            async with s.post(gw.url + "/v1/messages?beta=true", data=body, headers=sent) as r:
                assert r.status == 200
                await r.read()
    assert gw.capture is not None and await gw.capture.drain(30)


@pytest.fixture
async def filled(gateway: Gateway, upstream: FakeAnthropic) -> Gateway:
    await _replay(gateway, "haiku", extra_tool=True)
    return gateway


def _conn(gw: Gateway) -> sqlite3.Connection:
    return stats.open_readonly(gw.settings.spool_path)


def _rec(found: insights.Insights, kind: str, target: str) -> insights.Recommendation:
    (rec,) = [r for r in found.recommendations if r.kind == kind and r.target == target]
    return rec


async def test_an_mcp_server_never_called_is_unused_with_its_attributed_cost_as_saving(filled: Gateway) -> None:
    conn = _conn(filled)
    found = insights.insights(conn, stats.window(), time.time())
    rec = _rec(found, "unused_mcp_server", "spare_box")
    # Computed here independently: the calls whose requests carried the server's tool schema.
    rows = conn.execute(
        "SELECT exchange_id, tokens, cost_usd FROM attribution_items WHERE side = 'request'"
        " AND category = 'mcp' AND item LIKE 'spare_box/%'"
    ).fetchall()
    carried = {r[0] for r in rows}
    llm = conn.execute("SELECT count(*) FROM exchanges WHERE kind = 'messages'").fetchone()[0]
    assert rec.uses == 0 and rec.calls_present == len(carried) == llm > 0
    assert rec.saving_usd == pytest.approx(sum(r[2] for r in rows), abs=1e-6) and rec.saving_usd > 0
    assert rec.tokens == sum(r[1] for r in rows) > 0
    assert set(rec.evidence) == carried
    # The server the session did call is not called unused.
    assert not [r for r in found.recommendations if r.kind == "unused_mcp_server" and r.target == "acme_tools"]
    assert rec.action == recommend.mcp_action("spare_box")  # the setting tests/test_insights_actions.py verifies


async def test_insights_json_lists_the_never_called_server_as_the_done_when_says(
        filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["insights", "--json"]) == 0
    (rec,) = [r for r in json.loads(capsys.readouterr().out)["recommendations"]
              if r["kind"] == "unused_mcp_server" and r["target"] == "spare_box"]
    conn = _conn(filled)
    rows = conn.execute("SELECT exchange_id, cost_usd FROM attribution_items WHERE side = 'request'"
                        " AND category = 'mcp' AND item LIKE 'spare_box/%'").fetchall()
    assert rec["uses"] == 0 and rec["calls_present"] == len({r[0] for r in rows}) > 0
    assert abs(rec["saving_usd"] - sum(r[1] for r in rows)) <= 1e-6


async def test_builtin_tools_called_are_not_recommended_and_uncalled_ones_are(filled: Gateway) -> None:
    found = insights.insights(_conn(filled), stats.window(), time.time())
    unused = {r.target for r in found.recommendations if r.kind == "unused_builtin_tool"}
    assert "Bash" not in unused and "Skill" not in unused and "Agent" not in unused
    assert "WebFetch" in unused


async def test_totals_equal_stats_for_the_same_window(filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    for window in (None, "week", "today"):
        args = [window] if window else []
        assert main(["stats", *args, "--json"]) == 0
        want = json.loads(capsys.readouterr().out)["totals"]
        assert main(["insights", *(args or ["month"]), "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        for key in ("calls", "cost_usd", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"):
            assert got["totals"][key] == want[key], (window, key)
        assert got["totals"]["at_list_usd"] == 0  # an API key: nothing is list-priced
        assert {"kind", "target", "calls_present", "uses", "tokens", "saving_usd", "action", "evidence"} <= set(
            got["recommendations"][0])


async def test_every_evidence_id_resolves_with_explain(filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["insights", "--json"]) == 0
    ids = {i for r in json.loads(capsys.readouterr().out)["recommendations"] for i in r["evidence"]}
    assert ids
    assert main(["explain", *sorted(ids), "--json"]) == 0
    assert {c["id"] for c in json.loads(capsys.readouterr().out)} == ids


async def test_markdown_fits_forty_lines_and_names_how_savings_are_computed(
        filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["insights", "--markdown"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) <= 40
    text = "\n".join(out)
    assert "unused_mcp_server | spare_box" in text and "attributed cost" in text


async def test_plain_text_when_piped(filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["insights"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "spare_box" in out and "where the tokens went" in out


async def test_subscription_calls_are_labelled_at_list(gateway: Gateway, upstream: FakeAnthropic) -> None:
    oauth = {"authorization": "Bearer sk-ant-oat01-secret", "anthropic-beta": "oauth-2025-04-20"}
    await _replay(gateway, "haiku", extra_tool=False, headers=oauth)
    found = insights.insights(_conn(gateway), stats.window(), time.time())
    assert found.totals.cost_usd > 0 and found.at_list_usd == pytest.approx(found.totals.cost_usd)
    assert "at list" in insights.render_text(found) and "at list" in insights.render_markdown(found)
    headers = _conn(gateway).execute("SELECT request_headers FROM exchanges").fetchall()
    assert all("secret" not in h[0] for h in headers)


def test_previous_window_has_the_same_length_just_before() -> None:
    win = stats.Window("last 7 days", 1000.0 - 7 * 86400)
    prev = insights.previous_window(win, 1000.0)
    assert prev is not None and prev.until == win.since and prev.since == win.since - 7 * 86400
    assert insights.previous_window(stats.Window("all time", None), 1000.0) is None


@pytest.mark.parametrize(("now", "before", "want"), [(2.0, 1.0, "+100%"), (1.0, 2.0, "-50%"), (1.0, 0.0, "new"),
                                                     (0.0, 0.0, "0%"), (1.0, None, "-")])
def test_change_against_the_previous_window(now: float, before: float | None, want: str) -> None:
    assert insights.change(now, before) == want


def test_sparkline_scales_to_the_highest_day() -> None:
    assert insights.sparkline([0.0, 1.0, 2.0]) == "▁▅█"
    assert insights.sparkline([0.0, 0.0]) == "▁▁"


def test_readonly_spool_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(stats.StatsError):
        stats.open_readonly(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()


async def test_listed_but_never_invoked_skills_agents_and_commands_are_priced_by_their_listing_entry(
    filled: Gateway,
) -> None:
    conn = _conn(filled)
    found = insights.insights(conn, stats.window(), time.time())
    by_kind: dict[str, set[str]] = {}
    for r in found.recommendations:
        by_kind.setdefault(r.kind, set()).add(r.target)
    # The recorded session invokes acme-skill (Skill tool), acme-reviewer (Agent) and /acme-cmd.
    assert "acme-skill" not in by_kind.get("unused_skill", set())
    assert "acme-reviewer" not in by_kind.get("unused_agent", set())
    assert "acme-cmd" not in by_kind.get("unused_slash_command", set())
    # Listed in every call and never invoked: the built-in ones the recording did not use.
    assert by_kind["unused_skill"] and by_kind["unused_agent"]
    for kind, category in (("unused_skill", "skills"), ("unused_agent", "agents")):
        for rec in (r for r in found.recommendations if r.kind == kind):
            rows = conn.execute(
                "SELECT exchange_id, tokens, cost_usd FROM attribution_items WHERE side = 'request'"
                " AND category = ? AND item = ?", (category, f"listing:{rec.target}"),
            ).fetchall()
            assert rec.uses == 0 and rec.calls_present == len({r[0] for r in rows}) > 0
            assert rec.saving_usd == pytest.approx(sum(r[2] for r in rows), abs=1e-9)
            assert rec.tokens == sum(r[1] for r in rows)
    skill = next(r for r in found.recommendations if r.kind == "unused_skill")
    assert skill.action == recommend.skill_action(skill.target) and "disable-model-invocation" in skill.action
    agent = next(r for r in found.recommendations if r.kind == "unused_agent")
    assert f"Agent({agent.target})" in agent.action


async def test_project_filter_keeps_only_sessions_under_the_path(filled: Gateway, tmp_path: Path) -> None:
    conn = _conn(filled)
    win = stats.window()
    projects = stats.session_projects(conn, win)
    (project,) = {p for s, p in projects.items() if s}
    assert insights.project_sessions(conn, win, project) == tuple(sorted(s for s in projects if s))
    assert insights.project_sessions(conn, win, project + "/..x") == ()
    assert insights.project_sessions(conn, win, str(tmp_path / "elsewhere")) == ()
    inside = insights.insights(conn, dataclasses.replace(win, sessions=()), time.time())
    assert inside.totals.calls == 0 and inside.recommendations == []


async def test_a_command_not_yet_known_is_not_called_an_unused_skill(gateway: Gateway, upstream: FakeAnthropic) -> None:
    # opus48 invokes /acme-cmd in a later call: before it, its listing line reads as a skill's.
    from tests.support.replay import replay

    await replay(gateway, "opus48")
    found = insights.insights(_conn(gateway), stats.window(), time.time())
    assert "acme-cmd" not in {r.target for r in found.recommendations if r.kind == "unused_skill"}


def test_a_plugins_mcp_server_is_not_given_the_mcpjson_setting() -> None:
    action = recommend.mcp_action("plugin_opik-cipx_opik-cipx")
    assert "disabledMcpjsonServers\"" not in action and "no setting has been verified" in action
    assert '"mcp__plugin_opik-cipx_opik-cipx"' in action
    assert '"disabledMcpjsonServers": ["acme_tools"]' in recommend.mcp_action("acme_tools")

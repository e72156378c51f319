"""The viewer's Insights home page and context-growth chart (viewer/insights_api.py).

The API must say what `opik-cipx insights --json` says for the same window; the
page is checked in Debian's headless Chromium, with screenshots for the README.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opik_cipx.cli import main
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.replay import recorded, replay
from tests.test_viewer import ARTIFACTS, browser, needs_chromium, new_page, url_of

__all__ = ["browser"]  # the fixture, imported so pytest finds it here
DOCS = Path(__file__).resolve().parent.parent / "docs"
PLAN = {
    "anthropic-ratelimit-unified-status": "allowed_warning",
    "anthropic-ratelimit-unified-5h-utilization": "0.42",
    "anthropic-ratelimit-unified-5h-reset": "1765000000",
    "anthropic-ratelimit-unified-7d-utilization": "0.93",
    "anthropic-ratelimit-unified-7d-reset": "1765500000",
    "anthropic-ratelimit-unified-representative-claim": "seven_day",
}


async def api(gw: Gateway, path: str) -> tuple[int, Any]:
    token = url_of(gw).split("token=", 1)[1]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/_cipx/api/{path}", headers={"Cookie": f"cipx_viewer_{gw.port}={token}"}) as r:
            return r.status, await r.json()


def _session() -> str:
    return str(recorded("opus48")[0][2]["X-Claude-Code-Session-Id"])


async def test_the_insights_api_is_the_insights_report_of_the_same_window(
    gateway: Gateway, upstream: FakeAnthropic, capsys: pytest.CaptureFixture[str]
) -> None:
    await replay(gateway, "opus48")
    status, data = await api(gateway, "insights?window=all")
    assert status == 200, data
    capsys.readouterr()
    assert main(["insights", "--since", "2000-01-01", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert data["totals"]["calls"] == cli["totals"]["calls"] > 0
    assert data["totals"]["cost_usd"] == pytest.approx(cli["totals"]["cost_usd"], abs=1e-9)
    key = [(r["kind"], r["target"], r["calls_present"]) for r in data["recommendations"]]
    assert key == [(r["kind"], r["target"], r["calls_present"]) for r in cli["recommendations"]] and key
    assert data["plan"] is None  # API-key calls: no plan windows
    status, err = await api(gateway, "insights?window=forever")
    assert status == 400 and "unknown window" in err["error"]


async def test_context_growth_gives_each_main_calls_request_bytes_by_category(
    gateway: Gateway, upstream: FakeAnthropic
) -> None:
    await replay(gateway, "opus48")
    status, g = await api(gateway, f"sessions/{_session()}/growth")
    assert status == 200, g
    assert gateway.spool is not None
    rows = await gateway.spool.run(lambda sp: sp.conn.execute(
        "SELECT e.id, a.call_kind, e.agent_id, a.body_bytes FROM exchanges e JOIN attribution a ON a.exchange_id = e.id"
        " WHERE e.session_id = ? ORDER BY e.started_at, e.id", (_session(),)).fetchall())
    main_calls = [r for r in rows if r[1] in ("main", "compaction") and not r[2]]
    assert [c["id"] for c in g["calls"]] == [r[0] for r in main_calls]
    for call, row in zip(g["calls"], main_calls, strict=True):
        assert sum(call["bytes"].values()) == row[3]  # every byte of the body, in some category
    assert g["compactions"] == [r[0] for r in main_calls if r[1] == "compaction"] and len(g["compactions"]) == 1
    assert g["left_out"]["subagent_or_side_calls"] == len(rows) - len(main_calls) > 0
    status, _ = await api(gateway, "sessions/no-such-session/growth")
    assert status == 404


@pytest.mark.slow
@needs_chromium
async def test_insights_is_the_home_page_with_recommendations_linking_to_their_evidence(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    upstream.extra_headers.update(PLAN)
    await replay(gateway, "opus48")
    _, data = await api(gateway, "insights?window=month")
    page = await new_page(browser)
    await page.goto(url_of(gateway))
    await page.wait_for_selector("#recommendations tbody tr")
    rows = page.locator("#recommendations tbody tr[data-kind]")
    assert await rows.count() == len(data["recommendations"]) > 0
    # Each kind shows its costliest five; the rest are one click away.
    hidden = page.locator("#recommendations tbody tr.extra[hidden]")
    n_hidden = await hidden.count()
    assert n_hidden > 0 and await page.locator("#recommendations tbody tr:not([hidden])[data-kind]").count() <= 5 * len(
        {r["kind"] for r in data["recommendations"]})
    assert await page.locator("#spend-chart rect.daybar").count() == len(data["by_day"]) >= 1
    assert "$" in await page.locator("#spend-total").inner_text()
    plan = await page.locator("#plan").inner_text()
    assert "42%" in plan and "93%" in plan and "allowed_warning" in plan
    assert await page.locator("#plan .bar.hot").count() == 1  # the 7-day window, past 90 %
    kinds = set(await page.locator("#recommendations tbody tr").evaluate_all("rs => rs.map(r => r.dataset.kind)"))
    assert {"unused_builtin_tool", "unused_skill"} <= kinds
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "viewer-insights.png"), full_page=True)
    await page.locator("#recommendations tr.more-row button").first.click()
    assert await hidden.count() < n_hidden
    first = page.locator("#recommendations a.evidence").first
    target = await first.get_attribute("href")
    await first.click()
    await page.wait_for_selector("#body span.r")
    assert target is not None and page.url.endswith(target)
    assert not page.errors


@pytest.mark.slow
@needs_chromium
async def test_the_session_page_stacks_context_growth_and_marks_the_compaction(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    await replay(gateway, "opus48")
    _, g = await api(gateway, f"sessions/{_session()}/growth")
    page = await new_page(browser)
    await page.goto(url_of(gateway) + f"#/session/{_session()}")
    await page.wait_for_selector("#growth-chart g.call")
    assert await page.locator("#growth-chart g.call").count() == len(g["calls"])
    assert await page.locator("#growth-chart .compaction-mark").count() == 1
    # Each call's stack is as tall as its body: heights are proportional to the bytes.
    heights = await page.locator("#growth-chart g.call").evaluate_all(
        "gs => gs.map(g => [...g.querySelectorAll('rect')].reduce((a, r) => a + +r.getAttribute('height'), 0))")
    totals = [sum(c["bytes"].values()) for c in g["calls"]]
    top = max(totals)
    assert heights == pytest.approx([160 * t / top for t in totals], abs=0.05)
    fills = await page.locator("#growth-chart rect").evaluate_all("rs => new Set(rs.map(r => r.getAttribute('fill'))).size")
    assert fills >= 4  # categories drawn in their own colours
    ARTIFACTS.mkdir(exist_ok=True)
    await page.locator("#growth").screenshot(path=str(ARTIFACTS / "viewer-growth.png"))
    assert not page.errors


def test_readme_screenshots_exist() -> None:
    for name in ("viewer-insights.png", "viewer-growth.png"):
        assert (DOCS / name).stat().st_size > 10_000, name
        assert f"docs/{name}" in (DOCS.parent / "README.md").read_text()


if __name__ == "__main__":  # pragma: no cover - refresh the README's screenshots from a test run
    for name in ("viewer-insights.png", "viewer-growth.png"):
        shutil.copy(ARTIFACTS / name, DOCS / name)

"""The viewer in headless Chromium, against a gateway filled with recorded Claude Code calls.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright's Python package; it is
launched with background networking off and only ever loads loopback URLs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opik_cipx.attribute.analysis import analyze
from opik_cipx.cli import main
from opik_cipx.server import Gateway
from opik_cipx.store import attribution as attribution_store
from opik_cipx.store.spool import Spool, connect
from opik_cipx.viewer import queries, read_token, token_path, viewer_url
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.gateway import body_payload
from tests.support.replay import recorded, replay

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
UNATTRIBUTED_RED = "rgb(229, 57, 53)"

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def new_page(browser: Any, **context: Any) -> Any:
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000}, **context)
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page


def url_of(gw: Gateway) -> str:
    token = read_token(gw.settings.home)
    assert token is not None and gw.port is not None
    return viewer_url(gw.port, token)


async def post(gw: Gateway, body: bytes, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/messages?beta=true", data=body_payload(body),
                          headers={**headers, "x-api-key": "sk-ant-test"}) as r:
            assert r.status == 200
            await r.read()
    assert gw.capture is not None and await gw.capture.drain(30)


async def newest_id(gw: Gateway) -> str:
    assert gw.spool is not None
    rows = await gw.spool.run(lambda sp: sp.calls(limit=1))
    return rows[0].id


async def rendered_spans(page: Any) -> list[dict[str, Any]]:
    return await page.evaluate("""() => Array.from(document.querySelectorAll('#body span.r')).map(s => ({
        start: +s.dataset.start, end: +s.dataset.end, len: +s.dataset.len, cat: s.dataset.cat,
        item: s.dataset.item || '', bg: getComputedStyle(s).backgroundColor }))""")


@pytest.mark.slow
@needs_chromium
async def test_captures_list_loads_and_trades_the_url_token_for_a_cookie(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    labels = await replay(gateway, "opus48")
    page = await new_page(browser)
    await page.goto(url_of(gateway) + "#/captures")
    await page.wait_for_selector("#calls tr.row")
    assert "token=" not in page.url and page.url.endswith("/_cipx/viewer/#/captures")
    rows = page.locator("#calls tr.row")
    assert await rows.count() == len(labels), await page.locator("#calls").inner_text()
    kinds = set(await page.locator("#calls tr.row td:nth-child(3)").all_inner_texts())
    assert {"main", "subagent", "compaction"} <= kinds
    cookies = await page.context.cookies()
    (cookie,) = [c for c in cookies if c["name"].startswith("cipx_viewer_")]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # Filtering by call kind goes back to the server and narrows the list.
    await page.select_option("select[name=kind]", "subagent")
    await page.wait_for_function("() => { const k = [...document.querySelectorAll('#calls tr.row td:nth-child(3)')];"
                                 " return k.length > 0 && k.every(td => td.innerText === 'subagent'); }")
    assert 0 < await rows.count() < len(labels)
    assert not page.errors


@pytest.mark.slow
@needs_chromium
async def test_detail_colours_every_region_with_the_attributed_byte_counts(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    await replay(gateway, "opus48")
    # One field no attribution rule knows: those bytes must show up red, and only those.
    _, body, headers = recorded("haiku")[2]
    body = b'{"zz_custom":{"note":"a field the attribution does not know"},' + body[1:]
    await post(gateway, body, headers)
    exchange_id = await newest_id(gateway)
    assert gateway.spool is not None
    ex = await gateway.spool.get(exchange_id)
    assert ex is not None
    attr = analyze(ex, gateway.prices)
    assert attr.unattributed_bytes > 0

    page = await new_page(browser)
    await page.goto(url_of(gateway) + "#/captures")
    await page.wait_for_selector("#calls tr.row")
    await page.click(f"#calls tr.row[data-id='{exchange_id}']")
    await page.wait_for_selector("#body[data-state=done]")
    spans = await rendered_spans(page)

    # Every byte once, in order, each region as many bytes as the attribution says.
    regions: dict[tuple[int, int, str, str], int] = defaultdict(int)
    for s in spans:
        regions[(s["start"], s["end"], s["cat"], s["item"])] += s["len"]
    expected = [(r.start, r.end, r.category, r.item) for r in attr.segments()]
    assert list(regions) == expected
    assert all(size == end - start for (start, end, _, _), size in regions.items())
    by_category: dict[str, int] = defaultdict(int)
    for (start, end, cat, _), _size in regions.items():
        by_category[cat] += end - start
    for name, total in attr.categories.items():
        assert by_category.get(name, 0) == total.bytes, name
    assert by_category["unattributed"] == attr.unattributed_bytes

    # Red exactly where the attribution found nothing, nowhere else.
    red = [(s["start"], s["end"]) for s in spans if s["bg"] == UNATTRIBUTED_RED]
    gaps = [(r.start, r.end) for r in attr.segments() if r.category == "unattributed"]
    assert red == gaps and red
    assert await page.locator("#body").evaluate("b => b.textContent") == body.decode("utf-8")
    assert "unattributed" in await page.locator("#legend").inner_text()

    # Hovering a region names its category and item with the item's totals.
    mcp = next(r for r in attr.regions if r.category == "mcp")
    await page.hover(f"#body span.r[data-start='{mcp.start}']")
    tip = await page.locator("#tip").inner_text()
    assert "mcp" in tip and mcp.item in tip and f"{mcp.end - mcp.start:,} bytes" in tip
    assert "tokens" in tip
    await page.click(f"#body span.r[data-start='{mcp.start}']")
    assert mcp.item in await page.locator("#selection").inner_text()
    assert await page.locator("#response .resp-block").count() > 0
    assert await page.locator("#categories tr[data-cat=mcp]").count() == 1

    ARTIFACTS.mkdir(exist_ok=True)
    await page.evaluate("document.getElementById('tip').hidden = true")
    await page.locator("#body").evaluate("b => b.scrollTop = 0")
    await page.screenshot(path=str(ARTIFACTS / "viewer-detail.png"), full_page=False)
    assert not page.errors


@pytest.mark.slow
@needs_chromium
async def test_session_view_groups_subagents_and_shows_the_compaction(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    await replay(gateway, "opus48")
    session = recorded("opus48")[0][2]["X-Claude-Code-Session-Id"]
    page = await new_page(browser)
    await page.goto(url_of(gateway) + "#/captures")
    await page.wait_for_selector("#calls tr.row")
    await page.evaluate(f"location.hash = '#/session/{session}'")
    await page.wait_for_selector("#session-calls tr")
    groups = page.locator("#session-calls tr.group")
    assert await groups.count() >= 1
    assert await page.locator("#session-calls tr.sub").count() >= 2
    assert await page.locator("#session-compactions tbody tr").count() == 1
    saved = await page.locator("#session-compactions tbody tr td:nth-child(4)").inner_text()
    assert saved not in ("–", "")
    assert await page.locator("#cost-chart polyline").count() == 1
    assert await page.locator("#cost-chart circle").count() == 10
    assert "acme_tools" in await page.locator("#session-mcp").inner_text()
    assert "/tmp/cipx-cc-record/opus48/project" in await page.locator("main").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "viewer-session.png"))
    assert not page.errors


def big_body(target: int) -> bytes:
    """A ~target-byte Claude Code-shaped request: many turns with tool calls and results."""
    messages: list[dict[str, Any]] = []
    i = 0
    chunk = "lorem ipsum dolor sit amet, consectetur adipiscing elit — ünïcödé ✓ " * 6
    size = 0
    while size < target:
        messages.append({"role": "user", "content": [{"type": "text", "text": f"turn {i}: {chunk}"}]})
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"answer {i}: {chunk}"},
            {"type": "tool_use", "id": f"toolu_{i:06d}", "name": "Bash", "input": {"command": f"echo {i}"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i:06d}", "content": chunk * 2}]})
        size += sum(len(json.dumps(m, ensure_ascii=False).encode()) + 2 for m in messages[-3:])
        i += 1
    body = {"model": "claude-haiku-4-5-20251001", "max_tokens": 100, "messages": messages,
            "system": [{"type": "text", "text": "You are Claude Code."}],
            "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
            "metadata": {"user_id": json.dumps({"session_id": "big-session"})}, "stream": True}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


@pytest.mark.slow
@needs_chromium
async def test_a_1mb_body_renders_in_slices_without_freezing_the_page(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    body = big_body(1024 * 1024)
    assert len(body) >= 1024 * 1024
    await post(gateway, body, {"Content-Type": "application/json", "anthropic-version": "2023-06-01"})
    exchange_id = await newest_id(gateway)
    page = await new_page(browser)
    # Record every task that blocked the main thread for more than 50 ms.
    await page.add_init_script("""window.__long = []; new PerformanceObserver(l => {
        for (const e of l.getEntries()) window.__long.push(e.duration); }).observe({type: 'longtask', buffered: true});""")
    await page.goto(url_of(gateway) + "#/captures")
    await page.wait_for_selector("#calls tr.row")
    started = time.monotonic()
    await page.evaluate(f"location.hash = '#/call/{exchange_id}'")
    await page.wait_for_selector("#body[data-state=rendering], #body[data-state=done]")
    # While the body is still being laid down, the page answers input.
    responsive = await page.evaluate("() => new Promise(r => setTimeout(() => r(true), 0))")
    await page.wait_for_selector("#body[data-state=done]", timeout=60_000)
    elapsed = time.monotonic() - started
    spans = await rendered_spans(page)
    assert sum(s["len"] for s in spans) == len(body)
    batches = int(await page.locator("#body").get_attribute("data-batches") or 0)
    longest = max(await page.evaluate("window.__long"), default=0.0)
    print(f"1 MB body: {len(spans)} spans, {batches} slices, {elapsed:.2f}s, longest task {longest:.0f} ms")
    assert responsive and batches > 1
    # A slice is ~10 ms of work. Rendered in one task, this body blocked the page for ~1.3 s
    # (measured with the slicing and content-visibility turned off); sliced, under 0.2 s.
    assert longest < 1000, f"the main thread was blocked for {longest:.0f} ms"
    # Scrolling to the end lays out and shows the last bytes (off-screen blocks are skipped).
    await page.locator("#body").evaluate("b => b.scrollTop = b.scrollHeight")
    await page.wait_for_function("t => { const b = document.querySelectorAll('#body .blk');"
                                 " return b[b.length - 1].innerText.includes(t); }", arg=body.decode()[-40:], timeout=10_000)
    assert not page.errors


@pytest.mark.slow
@needs_chromium
async def test_a_page_reached_through_a_rebinding_name_is_refused(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    from playwright.async_api import async_playwright

    await replay(gateway, "haiku")
    token = read_token(gateway.settings.home)
    # A real DNS rebinding: the attacker's name resolves to 127.0.0.1 inside the browser.
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.attacker.test 127.0.0.1"])
        try:
            page = await (await b.new_context()).new_page()
            resp = await page.goto(f"http://rebind.attacker.test:{gateway.port}/_cipx/viewer/?token={token}")
            assert resp is not None and resp.status == 403
            resp = await page.goto(f"http://rebind.attacker.test:{gateway.port}/_cipx/api/calls?token={token}")
            assert resp is not None and resp.status == 403
            assert "MARKER_" not in await page.content()
        finally:
            await b.close()


async def test_host_origin_and_token_are_checked_on_every_route(gateway: Gateway, upstream: FakeAnthropic) -> None:
    await replay(gateway, "haiku")
    exchange_id = await newest_id(gateway)
    token = read_token(gateway.settings.home)
    port = gateway.port
    base = gateway.url
    routes = ["/_cipx/viewer/", "/_cipx/viewer/static/app.js", "/_cipx/api/calls", f"/_cipx/api/calls/{exchange_id}",
              f"/_cipx/api/calls/{exchange_id}/body", "/_cipx/api/sessions", "/_cipx/api/filters", "/_cipx/metrics"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        for path in routes:
            for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1"):
                async with s.get(f"{base}{path}?token={token}", headers={"Host": host}) as r:
                    assert r.status == 403, (path, host)
                    assert b"MARKER_" not in await r.read()
        for path in routes[:-1]:
            async with s.get(base + path) as r:
                assert r.status == 401, path
            async with s.get(f"{base}{path}?token=not-the-token") as r:
                assert r.status == 401, path
            for host in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"):
                async with s.get(f"{base}{path}?token={token}", headers={"Host": host}, allow_redirects=False) as r:
                    assert r.status in (200, 303), (path, host)
            # A cross-origin read is refused even with the token.
            async with s.get(f"{base}{path}?token={token}", headers={"Origin": "http://evil.example"},
                             allow_redirects=False) as r:
                assert r.status == 403, path
        async with s.get(f"{base}/_cipx/api/calls/{exchange_id}?token={token}") as r:
            assert r.status == 200
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            detail = await r.json()
            assert detail["id"] == exchange_id and detail["regions"]
        # State changes need our own Origin.
        reattr = f"{base}/_cipx/api/calls/{exchange_id}/reattribute?token={token}"
        async with s.post(reattr) as r:
            assert r.status == 403
        async with s.post(reattr, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with s.post(reattr, headers={"Origin": f"http://127.0.0.1:{port}"}) as r:
            assert r.status == 200 and (await r.json())["id"] == exchange_id


async def test_reattribute_stores_the_attribution_again(gateway: Gateway, upstream: FakeAnthropic) -> None:
    await replay(gateway, "haiku")
    exchange_id = await newest_id(gateway)
    assert gateway.spool is not None
    await gateway.spool.run(lambda sp: sp.conn.execute("DELETE FROM attribution WHERE exchange_id = ?", (exchange_id,)))
    token = read_token(gateway.settings.home)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gateway.url}/_cipx/api/calls/{exchange_id}/reattribute?token={token}",
                          headers={"Origin": f"http://localhost:{gateway.port}", "Host": f"localhost:{gateway.port}"}) as r:
            assert r.status == 200
    stored = await gateway.spool.run(lambda sp: attribution_store.load(sp.conn, exchange_id))
    assert stored is not None and stored["body_bytes"] > 0


async def test_viewer_command_prints_the_live_url_and_opens_it(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = token_path(gateway.settings.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    # The command blocks on HTTP: run it off the loop that serves the gateway.
    assert await asyncio.to_thread(main, ["viewer", "--open"]) == 0
    url = capsys.readouterr().out.strip()
    assert url == url_of(gateway) and opened == [url]
    # unsafe=True: aiohttp's jar otherwise drops cookies set by an IP-address host.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(url) as r:
            assert r.status == 200 and "opik-cipx viewer" in await r.text()
            assert r.history and r.history[0].status == 303 and "token=" not in str(r.url)


async def test_viewer_command_fails_when_no_gateway_answers(
    make_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["viewer"]) == 1
    assert "not running" in capsys.readouterr().err
    settings = make_settings()
    settings.home.mkdir(parents=True)
    token_path(settings.home).write_text("stale\n")
    settings.port_file.write_text("1\n")  # nothing listens on port 1
    assert main(["viewer"]) == 1
    assert "no gateway answers" in capsys.readouterr().err


async def test_the_token_file_goes_with_the_gateway(gateway: Gateway) -> None:
    path = token_path(gateway.settings.home)
    assert path.exists()
    await gateway.stop()
    assert not path.exists()


# --- paging at scale ---------------------------------------------------------------------------


def fill(conn: sqlite3.Connection, n: int) -> None:
    t0 = 1_790_000_000.0
    rows = ((f"{i:032x}", t0 + i // 3, "messages", "POST", "/v1/messages", 200, "complete", f"s{i % 250}",
             f"a{i % 7}" if i % 5 == 0 else None, ("claude-opus-4-6", "claude-haiku-4-5")[i % 2], 100, 10, 1000, 2000,
             0.01) for i in range(n))
    with conn:
        conn.executemany(
            "INSERT INTO exchanges (id, started_at, kind, method, path, status, outcome, session_id, agent_id, model,"
            " input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "INSERT INTO attribution (exchange_id, call_kind, agent_id, body_bytes, unattributed_bytes,"
            " messages_bytes, summary) VALUES (?, ?, NULL, 1000, 3, 500, '{}')",
            ((f"{i:032x}", "subagent" if i % 5 == 0 else "main") for i in range(n)))


@pytest.mark.slow
def test_listing_pages_by_keyset_and_stays_fast_at_100k_calls(tmp_path: Path) -> None:
    spool = Spool(connect(tmp_path / "big.sqlite3"))
    n = 100_000
    fill(spool.conn, n)
    conn = spool.conn
    for filters in ({}, {"session_id": "s7"}, {"model": "claude-haiku-4-5"}):
        sql, params = queries.list_sql(**filters, before=(1_790_010_000.0, "0" * 32))
        plan = " ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", [*params, 100]))
        assert "TEMP B-TREE" not in plan and "SCAN e" not in plan.replace("USING INDEX", ""), plan
    # Walk deep into the list; every page continues exactly where the last one stopped.
    seen: list[str] = []
    cursor = None
    for _ in range(40):
        page = queries.list_calls(conn, limit=500, cursor=cursor)
        seen += [c["id"] for c in page["calls"]]
        cursor = page["next"]
    assert len(seen) == len(set(seen)) == 20_000
    assert seen == [f"{i:032x}" for i in range(n - 1, n - 20_001, -1)]
    # The last page, reached by cursor, is the same index seek as the first (the plans above):
    # no sort and no scan, so its cost does not grow with the depth.
    tail = queries.list_calls(conn, limit=100, cursor=queries.encode_cursor(1_790_000_000.0 + 50, f"{151:032x}"))
    assert [c["id"] for c in tail["calls"]][:3] == [f"{i:032x}" for i in (150, 149, 148)]
    sub = queries.list_calls(conn, limit=50, kind="subagent", session_id="s5")
    assert sub["calls"] and all(c["call_kind"] == "subagent" and c["session_id"] == "s5" for c in sub["calls"])
    assert sub["calls"][0]["unattributed_pct"] == pytest.approx(0.3)
    with pytest.raises(queries.BadRequest):
        queries.list_calls(conn, cursor="garbage")


@pytest.mark.slow
@needs_chromium
async def test_a_call_pruned_by_retention_shows_its_totals_and_says_why_the_body_is_gone(
    gateway: Gateway, upstream: FakeAnthropic, browser: Any
) -> None:
    from opik_cipx.store.retention import Policy, prune

    _, body, headers = recorded("haiku")[0]
    await post(gateway, body, headers)
    exchange_id = await newest_id(gateway)
    assert gateway.spool is not None
    await gateway.spool.run(lambda sp: prune(sp.conn, Policy(days=1), time.time() + 2 * 86400))
    page = await new_page(browser)
    await page.goto(url_of(gateway) + "#/captures")
    await page.wait_for_selector("#calls tr.row")
    await page.evaluate(f"location.hash = '#/call/{exchange_id}'")
    await page.wait_for_selector("#pruned")
    assert "pruned by retention" in await page.locator("#pruned").inner_text()
    assert await page.locator("#reattribute").is_disabled()
    assert await page.locator("#categories, .card").count() > 0
    assert not page.errors

"""``opik-cipx mcp serve``: the JSON-RPC layer alone, the tools against stats, and the official
``mcp`` SDK's stdio client listing and calling each tool of the real subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.cli import main
from opik_cipx.mcp_server import Server, ServerInfo, Tool, ToolError, ToolResult
from opik_cipx.mcp_server.session_cost import session_cost
from opik_cipx.mcp_server.settle import settle
from opik_cipx.mcp_server.tools import Context, run_explain_call, run_insights, run_session_cost
from opik_cipx.pricing import PriceTable
from opik_cipx.report import stats
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.test_insights import _replay

ROOT = Path(__file__).resolve().parent.parent

# --- the protocol, without pipes ----------------------------------------------------------------


def _echo_server() -> Server:
    def run(args: Any, meta: Any) -> ToolResult:
        if args.get("fail"):
            raise ToolError("asked to fail")
        return ToolResult(f"echo {args.get('x')}", {"x": args.get("x")})

    return Server(ServerInfo("t", "1.0", "use echo"), [Tool("echo", "echoes", {"type": "object"}, run)])


def _ask(server: Server, message: Any) -> Any:
    answer = server.handle_line(json.dumps(message))
    return None if answer is None else json.loads(answer)


def test_initialize_echoes_a_known_protocol_version_and_offers_the_newest_otherwise() -> None:
    s = _echo_server()
    got = _ask(s, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}})
    assert got["id"] == 1 and got["result"]["protocolVersion"] == "2025-06-18"
    assert got["result"]["capabilities"] == {"tools": {"listChanged": False}}
    assert got["result"]["serverInfo"] == {"name": "t", "version": "1.0"} and got["result"]["instructions"] == "use echo"
    newer = _ask(s, {"jsonrpc": "2.0", "id": "a", "method": "initialize", "params": {"protocolVersion": "2099-01-01"}})
    assert newer["id"] == "a" and newer["result"]["protocolVersion"] == "2025-11-25"


def test_notifications_and_responses_get_no_answer_and_ping_an_empty_result() -> None:
    s = _echo_server()
    assert _ask(s, {"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    assert _ask(s, {"jsonrpc": "2.0", "id": 4, "result": {}}) is None
    assert _ask(s, {"jsonrpc": "2.0", "id": 5, "method": "ping"}) == {"jsonrpc": "2.0", "id": 5, "result": {}}
    assert s.handle_line(b"   ") is None


def test_tools_are_listed_and_called_and_a_tool_failure_is_a_result_with_is_error() -> None:
    s = _echo_server()
    listed = _ask(s, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert listed["result"]["tools"] == [{"name": "echo", "description": "echoes", "inputSchema": {"type": "object"}}]
    ok = _ask(s, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"x": 3}}})
    assert ok["result"] == {"content": [{"type": "text", "text": "echo 3"}], "isError": False,
                            "structuredContent": {"x": 3}}
    bad = _ask(s, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"fail": 1}}})
    assert bad["result"] == {"content": [{"type": "text", "text": "asked to fail"}], "isError": True}


@pytest.mark.parametrize(("line", "code", "msg_id"), [
    ("{not json", -32700, None),
    ('{"id": 1, "method": "ping"}', -32600, 1),  # no "jsonrpc": "2.0"
    ('{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600, None),
    ('{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}', -32602, 1),
    ('{"jsonrpc": "2.0", "id": 1, "method": "resources/list"}', -32601, 1),
    ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}}', -32602, 1),
    ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": "x"}}', -32602, 1),
    ("[]", -32600, None),
])
def test_malformed_requests_get_the_json_rpc_error_codes(line: str, code: int, msg_id: Any) -> None:
    answer = _echo_server().handle_line(line)
    assert answer is not None and "\n" not in answer
    got = json.loads(answer)
    assert got["jsonrpc"] == "2.0" and got["id"] == msg_id and got["error"]["code"] == code


def test_a_batch_is_answered_in_one_array_of_its_requests_answers() -> None:
    answer = _echo_server().handle_line(json.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/x"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"}]))
    assert answer is not None
    got = json.loads(answer)
    assert [a["id"] for a in got] == [1, 2] and got[1]["error"]["code"] == -32601


def test_a_tool_that_crashes_is_an_internal_error_and_the_server_goes_on() -> None:
    def boom(args: Any, meta: Any) -> ToolResult:
        raise KeyError("x")

    s = Server(ServerInfo("t", "1"), [Tool("boom", "", {}, boom)])
    got = _ask(s, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "boom"}})
    assert got["error"]["code"] == -32603 and "KeyError" in got["error"]["message"]
    assert _ask(s, {"jsonrpc": "2.0", "id": 2, "method": "ping"})["result"] == {}


# --- settle: waiting for capture ------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


def test_settle_waits_until_nothing_is_pending_and_the_submitted_count_holds() -> None:
    docs = iter([{"capture": {"pending": 1, "submitted": 3}}, {"capture": {"pending": 0, "submitted": 4}},
                 {"capture": {"pending": 0, "submitted": 5}}, {"capture": {"pending": 0, "submitted": 5}}])
    seen: list[int] = []

    def fetch() -> dict[str, Any]:
        doc = next(docs)
        seen.append(doc["capture"]["submitted"])
        return doc

    clock = _Clock()
    assert settle(fetch, clock=clock.now, sleep=clock.sleep) is True
    assert seen == [3, 4, 5, 5]


def test_settle_gives_up_at_its_timeout_or_when_the_gateway_does_not_answer() -> None:
    clock = _Clock()
    assert settle(lambda: {"capture": {"pending": 2, "submitted": 1}}, timeout=1.0, clock=clock.now,
                  sleep=clock.sleep) is False
    assert 1.0 <= clock.t <= 1.2  # bounded by the timeout (plus one poll)
    assert settle(lambda: None) is False
    assert settle(lambda: {"capture": None}) is True  # capture off: nothing to wait for


# --- the tools over a replayed session ----------------------------------------------------------


@pytest.fixture
async def filled(gateway: Gateway, upstream: FakeAnthropic) -> Gateway:
    await _replay(gateway, "haiku", extra_tool=True)
    return gateway


def _session(gw: Gateway) -> str:
    conn = stats.open_readonly(gw.settings.spool_path)
    try:
        (sid,) = {r[0] for r in conn.execute("SELECT session_id FROM exchanges WHERE kind = 'messages'")}
    finally:
        conn.close()
    assert sid
    return str(sid)


def _ctx(gw: Gateway, session_id: str | None = None) -> Context:
    return Context(gw.settings.spool_path, session_id=session_id, prices=PriceTable.builtin(), settle=lambda: True)


async def test_session_cost_equals_stats_by_session_and_its_categories_add_up(
        filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    sid = _session(filled)
    assert main(["stats", "--by", "session", "--json"]) == 0
    (want,) = [g for g in json.loads(capsys.readouterr().out)["groups"] if g["key"] == sid]
    conn = stats.open_readonly(filled.settings.spool_path)
    try:
        doc = session_cost(conn, sid)
        items = conn.execute("SELECT total(cost_usd), total(tokens) FROM attribution_items").fetchone()
    finally:
        conn.close()
    for key in ("calls", "cost_usd", "input_tokens", "cache_write_tokens", "cache_read_tokens", "output_tokens"):
        assert doc[key] == want[key], key
    assert doc["calls"] > 1 and doc["cost_usd"] > 0 and doc["at_list"] is False
    # Every attributed cent of the session, request side and output, is in some category.
    assert sum(g["cost_usd"] for g in doc["by_category"]) == pytest.approx(items[0], abs=1e-9)
    assert sum(g["tokens"] for g in doc["by_category"]) == items[1]
    assert {g["category"] for g in doc["by_category"]} >= {"mcp", "output"}
    assert sum(g["calls"] for g in doc["by_model"]) == doc["calls"]
    assert sum(g["calls"] for g in doc["by_call_kind"]) == doc["calls"]


async def test_session_cost_takes_the_session_from_the_env_or_the_argument(filled: Gateway) -> None:
    sid = _session(filled)
    from_env = run_session_cost(_ctx(filled, sid), {})
    assert from_env.data is not None and from_env.data["session_id"] == sid and from_env.data["calls"] > 0
    assert f"Session {sid}:" in from_env.text and "mcp" in from_env.text
    other = run_session_cost(_ctx(filled, sid), {"session_id": "no-such-session"})
    assert other.data is not None and other.data["calls"] == 0 and "No call of session" in other.text
    with pytest.raises(ToolError, match="CLAUDE_CODE_SESSION_ID"):
        run_session_cost(_ctx(filled), {})
    with pytest.raises(ToolError, match="unknown argument"):
        run_session_cost(_ctx(filled, sid), {"sesion": sid})


async def test_a_gateway_still_capturing_is_said_in_the_answer(filled: Gateway) -> None:
    ctx = _ctx(filled, _session(filled))
    ctx.settle = lambda: False
    got = run_session_cost(ctx, {})
    assert got.data is not None and got.data["capture_settled"] is False and "still capturing" in got.text


async def test_insights_tool_is_the_insights_report(filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["insights", "--markdown"]) == 0
    want_md = capsys.readouterr().out.strip()
    got = run_insights(_ctx(filled), {})
    assert got.text.strip() == want_md and "unused_mcp_server | spare_box" in got.text
    js = run_insights(_ctx(filled), {"window": "week", "format": "json"})
    assert js.data is not None and js.data["totals"]["calls"] > 0
    assert any(r["kind"] == "unused_mcp_server" for r in js.data["recommendations"])
    with pytest.raises(ToolError, match="unknown window"):
        run_insights(_ctx(filled), {"window": "fortnight"})
    with pytest.raises(ToolError, match="format"):
        run_insights(_ctx(filled), {"format": "html"})


async def test_explain_call_is_explain_for_an_id_prefix_or_the_newest(
        filled: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--json"]) == 0
    (newest,) = json.loads(capsys.readouterr().out)
    got = run_explain_call(_ctx(filled), {"call_id": newest["id"][:12], "format": "json"})
    assert got.data is not None and got.data["id"] == newest["id"] and "regions" not in got.data
    assert got.data["cost_usd"] == newest["cost_usd"]
    text = run_explain_call(_ctx(filled), {})
    assert newest["id"] in text.text
    with pytest.raises(ToolError, match="no stored call"):
        run_explain_call(_ctx(filled), {"call_id": "ffffffff"})


def test_tools_say_when_there_is_no_spool_yet(tmp_path: Path) -> None:
    ctx = Context(tmp_path / "spool.sqlite3", session_id="s", prices=PriceTable.builtin(), settle=lambda: True)
    for run in (run_session_cost, run_insights, run_explain_call):
        with pytest.raises(ToolError, match="no spool"):
            run(ctx, {})


async def test_the_tools_never_write_to_the_spool(filled: Gateway) -> None:
    path = filled.settings.spool_path
    conn = sqlite3.connect(path)
    before = conn.execute("PRAGMA data_version").fetchone(), conn.total_changes
    ctx = _ctx(filled, _session(filled))
    run_session_cost(ctx, {})
    run_insights(ctx, {"format": "json"})
    run_explain_call(ctx, {})
    # data_version moves when another connection commits a change to the file.
    assert (conn.execute("PRAGMA data_version").fetchone(), conn.total_changes) == before
    conn.close()


# --- the real subprocess, through the official SDK's stdio client ------------------------------


@pytest.mark.slow
async def test_the_sdk_client_lists_the_tools_and_calls_each(filled: Gateway) -> None:
    mcp = pytest.importorskip("mcp")
    from mcp.client.stdio import StdioServerParameters, stdio_client

    sid = _session(filled)
    env = {"CIPX_HOME": str(filled.settings.home), "HOME": os.environ["HOME"], "CLAUDE_CODE_SESSION_ID": sid,
           "PYTHONPATH": str(ROOT / "gateway"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "opik_cipx.cli", "mcp", "serve"], env=env)
    conn = stats.open_readonly(filled.settings.spool_path)
    try:
        want = session_cost(conn, sid)
    finally:
        conn.close()
    async with stdio_client(params) as (read, write), mcp.ClientSession(read, write) as client:
        init = await client.initialize()
        assert init.server_info.name == "opik-cipx"
        listed = await client.list_tools()
        assert sorted(t.name for t in listed.tools) == ["explain_call", "insights", "session_cost"]
        cost = await client.call_tool("session_cost", {})
        assert not cost.is_error
        assert cost.structured_content["calls"] == want["calls"]
        assert cost.structured_content["cost_usd"] == want["cost_usd"]
        assert f"Session {sid}:" in cost.content[0].text
        report = await client.call_tool("insights", {"window": "month"})
        assert not report.is_error and "unused_mcp_server | spare_box" in report.content[0].text
        explained = await client.call_tool("explain_call", {"call_id": want["last_call_id"], "format": "json"})
        assert not explained.is_error and explained.structured_content["id"] == want["last_call_id"]
        refused = await client.call_tool("explain_call", {"call_id": "ffffffff"})
        assert refused.is_error and "no stored call" in refused.content[0].text


# --- which session asked: the tool_use id beats the environment after a resume -----------------


def test_the_session_is_the_one_whose_stored_answer_asked_for_the_tool_use(tmp_path: Path) -> None:
    import gzip
    import time

    from opik_cipx.mcp_server.session_cost import session_of_tool_use
    from opik_cipx.store.spool import Spool, connect
    from tests.support.exchanges import make_exchange

    now = time.time()
    spool = Spool(connect(tmp_path / "spool.sqlite3"))
    asked = make_exchange("haiku", "prompt", started_at=now - 5, ex_id="a1",
                          content=[{"type": "tool_use", "id": "toolu_wanted", "name": "mcp__x__y", "input": {}}])
    asked.session_id = "resumed-session"
    other = make_exchange("haiku", "prompt", started_at=now - 2, ex_id="b2",
                          content=[{"type": "tool_use", "id": "toolu_other", "name": "Bash", "input": {}}])
    other.session_id = "another-session"
    # A gzip-encoded answer is searched decoded.
    zipped = make_exchange("haiku", "prompt", started_at=now - 1, ex_id="c3",
                           content=[{"type": "tool_use", "id": "toolu_zipped", "name": "Bash", "input": {}}])
    zipped.session_id = "zipped-session"
    zipped.response_body = gzip.compress(zipped.response_body)
    zipped.response_encoding = "gzip"
    old = make_exchange("haiku", "prompt", started_at=now - 7200, ex_id="d4",
                        content=[{"type": "tool_use", "id": "toolu_old", "name": "Bash", "input": {}}])
    for ex in (asked, other, zipped, old):
        spool.add(ex)
    conn = spool.conn
    assert session_of_tool_use(conn, "toolu_wanted", now) == "resumed-session"
    assert session_of_tool_use(conn, "toolu_zipped", now) == "zipped-session"
    assert session_of_tool_use(conn, "toolu_old", now) is None  # past the look-back window
    assert session_of_tool_use(conn, "toolu_nowhere", now) is None

    ctx = Context(tmp_path / "spool.sqlite3", session_id="fresh-id-from-env", prices=PriceTable.builtin(),
                  settle=lambda: True, now=lambda: now)
    by_meta = run_session_cost(ctx, {}, {"claudecode/toolUseId": "toolu_wanted"})
    assert by_meta.data is not None and by_meta.data["session_id"] == "resumed-session" and by_meta.data["calls"] == 1
    unknown = run_session_cost(ctx, {}, {"claudecode/toolUseId": "toolu_nowhere"})
    assert unknown.data is not None and unknown.data["session_id"] == "fresh-id-from-env"
    explicit = run_session_cost(ctx, {"session_id": "another-session"}, {"claudecode/toolUseId": "toolu_wanted"})
    assert explicit.data is not None and explicit.data["session_id"] == "another-session"
    spool.close()


# --- the stdio loop ----------------------------------------------------------------------------


def test_stdio_answers_line_by_line_skips_notifications_and_stops_at_eof() -> None:
    import io

    from opik_cipx.mcp_server import stdio

    lines = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/initialized"},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
    stdin = io.BytesIO(b"".join(json.dumps(m).encode() + b"\r\n" for m in lines))
    stdout = io.BytesIO()
    assert stdio.run(_echo_server(), stdin, stdout) == 0
    answers = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [a["id"] for a in answers] == [1, 2]


def test_stdio_refuses_an_oversized_line_and_reads_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from opik_cipx.mcp_server import stdio

    monkeypatch.setattr(stdio, "MAX_LINE", 64)
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 300}}).encode()
    stdin = io.BytesIO(big + b"\n" + json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode() + b"\n")
    stdout = io.BytesIO()
    stdio.run(_echo_server(), stdin, stdout)
    first, second = (json.loads(line) for line in stdout.getvalue().splitlines())
    assert first["error"]["code"] == -32700 and second == {"jsonrpc": "2.0", "id": 2, "result": {}}


def test_with_a_gateway_up_the_answer_that_asked_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture idle is not enough: the relay may not have handed the asking call to capture yet."""
    import time

    from opik_cipx.mcp_server import tools as tools_mod
    from opik_cipx.store.spool import Spool, connect
    from tests.support.exchanges import make_exchange

    now = time.time()
    spool = Spool(connect(tmp_path / "spool.sqlite3"))
    spool.add(make_exchange("haiku", "prompt", started_at=now - 9, ex_id="a0"))
    late = make_exchange("haiku", "prompt", started_at=now - 1, ex_id="a1",
                         content=[{"type": "tool_use", "id": "toolu_late", "name": "mcp__x__y", "input": {}}])
    late.session_id = "the-asker"
    polls: list[int] = []

    def up() -> bool:  # the gateway stores the call after the tool's first look
        polls.append(1)
        if len(polls) == 2:
            spool.add(late)
        return True

    monkeypatch.setattr(tools_mod, "TOOL_USE_WAIT", 30.0)
    ctx = Context(tmp_path / "spool.sqlite3", session_id="env-id", prices=PriceTable.builtin(), settle=lambda: True,
                  gateway_up=up, now=lambda: now)
    got = run_session_cost(ctx, {}, {"claudecode/toolUseId": "toolu_late"})
    assert got.data is not None and got.data["session_id"] == "the-asker" and got.data["calls"] == 1
    assert len(polls) == 2
    # With no gateway running nothing more will land: no wait, the environment's session.
    down = Context(tmp_path / "spool.sqlite3", session_id="env-id", prices=PriceTable.builtin(), settle=lambda: True)
    started = time.monotonic()
    assert run_session_cost(down, {}, {"claudecode/toolUseId": "toolu_never"}).data["session_id"] == "env-id"  # type: ignore[index]
    assert time.monotonic() - started < 2.0
    spool.close()

"""Attribution wired into the gateway: stored per call, explained from the spool by the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opik_cipx.attribute.analysis import SessionCall, analyze, compaction_deltas
from opik_cipx.cli import main
from opik_cipx.pricing import PriceTable
from opik_cipx.server import Gateway
from opik_cipx.store import attribution as attribution_store
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.replay import recorded, replay


@pytest.mark.parametrize("scenario", ["opus48", "haiku"])
async def test_every_replayed_call_is_attributed_and_stored(gateway: Gateway, upstream: FakeAnthropic, scenario: str) -> None:
    labels = await replay(gateway, scenario)
    assert gateway.spool is not None

    def read(sp: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        rows = sp.calls(limit=100)
        return rows, [attribution_store.load(sp.conn, r.id) for r in rows]

    rows, summaries = await gateway.spool.run(read)
    assert len(rows) == len(labels) and all(s is not None for s in summaries)
    for row, summary in zip(rows, summaries):
        assert summary["unattributed_bytes"] <= 0.005 * summary["body_bytes"]
        prompt = row.input_tokens + row.cache_creation_input_tokens + row.cache_read_input_tokens
        assert sum(c["tokens"] for c in summary["categories"].values()) == prompt
    kinds = {s["call_kind"] for s in summaries}
    assert {"main", "subagent", "compaction"} <= kinds


async def test_compaction_delta_pairs_compact_call_with_the_next_main_call(gateway: Gateway, upstream: FakeAnthropic) -> None:
    await replay(gateway, "opus48")
    assert gateway.spool is not None
    session = recorded("opus48")[0][2]["X-Claude-Code-Session-Id"]
    calls = await gateway.spool.run(lambda sp: attribution_store.session_calls(sp.conn, session))
    deltas = compaction_deltas(calls)
    assert len(deltas) == 1
    (delta,) = deltas.values()
    assert delta.next_exchange_id is not None
    # After /compact the conversation is a summary: much smaller than what was compacted.
    assert delta.messages_bytes_after is not None and delta.messages_bytes_after < delta.messages_bytes_before
    assert delta.bytes_saved is not None and delta.bytes_saved > 0


def test_compaction_delta_skips_subagent_calls_and_handles_no_next_call() -> None:
    calls = [
        SessionCall("a", 1.0, "main", None, 100, 50),
        SessionCall("b", 2.0, "compaction", None, 5000, 1200),
        SessionCall("c", 3.0, "subagent", "x1", 300, 90),
        SessionCall("d", 4.0, "main", None, 800, 300),
        SessionCall("e", 5.0, "compaction", None, 900, 310),
    ]
    deltas = compaction_deltas(calls)
    assert deltas["b"].next_exchange_id == "d" and deltas["b"].bytes_saved == 4200
    assert deltas["b"].prompt_tokens_after == 300
    assert deltas["e"].next_exchange_id is None and deltas["e"].bytes_saved is None


async def test_explain_json_regions_cover_the_stored_body(gateway: Gateway, upstream: FakeAnthropic,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    await replay(gateway, "sonnet")
    assert main(["explain", "--json"]) == 0
    [out] = json.loads(capsys.readouterr().out)  # a list even for one call
    assert gateway.spool is not None
    ex = await gateway.spool.get(out["id"])
    assert ex is not None
    covered = sum(r["end"] - r["start"] for r in out["regions"])
    assert covered + out["unattributed_bytes"] == len(ex.request_body) == out["body_bytes"]
    starts = [r["start"] for r in out["regions"]]
    assert starts == sorted(starts)
    assert all(a["end"] <= b["start"] for a, b in zip(out["regions"], out["regions"][1:]))
    assert out["call_kind"] == "main"
    # The same numbers the capture stage stored.
    stored = await gateway.spool.run(lambda sp: attribution_store.load(sp.conn, out["id"]))
    assert {k: v["tokens"] for k, v in stored["categories"].items()} == {k: v["tokens"] for k, v in out["categories"].items()}


async def test_explain_text_by_id_prefix_and_last(gateway: Gateway, upstream: FakeAnthropic,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    await replay(gateway, "haiku")
    assert main(["explain", "--last", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("\ncall ") + text.startswith("call ") == 2
    assert "unattributed:" in text and "system" in text and "builtin_tools" in text
    first_id = text.split()[1]
    assert main(["explain", first_id[:10]]) == 0
    assert capsys.readouterr().out.startswith(f"call {first_id}")


def test_explain_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain"]) == 1
    assert "has not captured anything yet" in capsys.readouterr().err


async def test_explain_unknown_id(gateway: Gateway, upstream: FakeAnthropic, capsys: pytest.CaptureFixture[str]) -> None:
    await replay(gateway, "haiku")
    assert main(["explain", "zzzz"]) == 1
    assert "no stored call with id 'zzzz'" in capsys.readouterr().err


def test_analyze_prices_the_shares_with_the_call_rates() -> None:
    from opik_cipx.model import CallKind, Exchange, Usage

    _, body, headers = recorded("opus")[2]
    usage = Usage(input_tokens=120, cache_creation_input_tokens=900, cache_read_input_tokens=8000, output_tokens=40)
    ex = Exchange(id="x", started_at=1_790_000_000.0, method="POST", path="/v1/messages", kind=CallKind.MESSAGES,
                  request_headers={k.lower(): v for k, v in headers.items()}, request_body=body, usage=usage,
                  model="claude-opus-4-6")
    prices = PriceTable.builtin()
    attr = analyze(ex, prices)
    cost = prices.price("claude-opus-4-6", usage, at=ex.started_at)
    total = sum(c.cost_usd or 0 for c in attr.categories.values()) + sum(o.cost_usd or 0 for o in attr.output_items)
    assert cost.total_usd is not None
    assert total == pytest.approx(cost.total_usd, rel=1e-6)


async def test_explain_prints_why_a_call_failed(make_settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import aiohttp

    async with Gateway(make_settings(upstream_url="http://127.0.0.1:9", capture_worker=False)) as gw:
        async with aiohttp.ClientSession() as client:
            body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            async with client.post(f"{gw.url}/v1/messages", json=body) as resp:
                assert resp.status == 502
        assert gw.capture is not None and await gw.capture.drain(5)
    assert main(["explain", "--last", "1"]) == 0
    text = capsys.readouterr().out
    error = next(line for line in text.splitlines() if line.strip().startswith("error:"))
    assert "127.0.0.1:9" in error or "refused" in error.lower(), error
    assert error.rstrip().endswith("(no answer from the upstream)")
    assert main(["explain", "--last", "1", "--json"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["outcome"] == "unreachable" and doc["error"] and doc["status"] is None


@pytest.mark.slow  # a subprocess or a flood of connections, several seconds
def test_explain_last_n_streams_with_memory_bounded_independent_of_n(tmp_path: Any) -> None:
    """`explain --last N --json` loads and prints one call at a time. Stated bound: the process
    grows by under 48 MiB explaining 240 calls of ~400 KB each (~96 MB of bodies); holding them
    all, as it used to, grew it by about 300 MiB (measured: 17 MiB after, 305 before)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from opik_cipx.model import CallKind, Exchange, Usage
    from opik_cipx.store.spool import Spool, connect

    home = tmp_path / "cipx"
    (home / "spool").mkdir(parents=True)
    env = {**os.environ, "CIPX_HOME": str(home), "HOME": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "gateway")}
    probe = "from opik_cipx.config import Settings; print(Settings().spool_path)"
    spool_path = Path(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                     check=True).stdout.strip())
    spool_path.parent.mkdir(parents=True, exist_ok=True)
    spool = Spool(connect(spool_path))
    n = 240
    for i in range(n):
        text = f"call {i} " + os.urandom(150_000).hex()[: 400_000 - 16]  # not deduplicated away
        body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8,
                           "messages": [{"role": "user", "content": text}]}).encode()
        spool.add(Exchange(id=f"{i:032x}", started_at=1_780_000_000.0 + i, method="POST", path="/v1/messages",
                           kind=CallKind.MESSAGES, request_body=body, status=200,
                           response_body=b'{"type":"message","content":[]}', model="claude-sonnet-4-5",
                           usage=Usage(input_tokens=100_000, output_tokens=1), request_bytes=len(body)))
    spool.close()
    code = (
        "import sys, io\n"
        "from pathlib import Path\n"
        "from opik_cipx import cli\n"
        "import opik_cipx.report.explain, opik_cipx.attribute.analysis, opik_cipx.store.attribution\n"
        "def hwm():\n"
        "    line = next(x for x in Path('/proc/self/status').read_text().splitlines() if x.startswith('VmHWM'))\n"
        "    return int(line.split()[1])\n"
        "base = hwm()\n"
        "out, sys.stdout = sys.stdout, open('/dev/null', 'w')\n"
        "rc = cli.main(['explain', '--last', sys.argv[1], '--json'])\n"
        "sys.stdout = out\n"
        "print(rc, (hwm() - base) // 1024)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(n)], env=env, capture_output=True, text=True, check=True)
    rc, grew_mib = map(int, run.stdout.split())
    assert rc == 0 and grew_mib < 48, f"explain --last {n} --json grew the process by {grew_mib} MiB"

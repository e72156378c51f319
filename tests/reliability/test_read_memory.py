"""Every read path keeps its memory bounded, however many calls the spool holds (issue 17 item 2).

One spool of 2,000 calls with request bodies of up to 1 MB (20 sessions of 100 turns whose
context grows to ~1 MB, as Claude Code resends it; chunk dedup keeps the file small) is
built once. Each reader then runs in a fresh interpreter and reports how far its peak
resident set (VmHWM) grew over the imports it needs. Stated bound: under 64 MiB of growth
and under 200 MiB peak for each of stats, insights, and the viewer's API (list pages, a
session, its context growth, the insights page, the biggest call).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.attribute import Attribution, ItemTotal
from opik_cipx.model import CallKind, Exchange, Usage
from opik_cipx.store import attribution as attribution_store
from opik_cipx.store.spool import Spool, connect

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SESSIONS, TURNS, MAX_BODY = 20, 100, 1_000_000
GROWTH_MIB, PEAK_MIB = 64, 200
CATEGORIES = ("system", "builtin_tools", "mcp", "tool_io", "assistant", "user_prompt")


def _attribution(size: int, i: int) -> Attribution:
    share = size // len(CATEGORIES)
    items = [ItemTotal(c, f"{c}-item-{k}", share // 4, share // 16, share / 4e7) for c in CATEGORIES for k in range(4)]
    items.append(ItemTotal("mcp", f"spare_{i % 7}/tool:ping", 400, 100, 1e-4))
    cats = {c: ItemTotal(c, "", share, share // 4, share / 1e7) for c in CATEGORIES}
    return Attribution(regions=[], body_bytes=size, unattributed_bytes=0, call_kind="main", agent_id=None,
                       items=items, categories=cats)


@pytest.fixture(scope="module")
def big_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("cipx-big")
    path = home / "spool" / "spool.sqlite3"
    path.parent.mkdir(parents=True)
    spool = Spool(connect(path))
    for s in range(SESSIONS):
        context = os.urandom(MAX_BODY // 2).hex()  # this session's conversation, as it will grow
        for t in range(TURNS):
            size = MAX_BODY * (t + 1) // TURNS
            text = context[: size - 200] + f" turn {t}"
            body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8,
                               "messages": [{"role": "user", "content": text}]}).encode()
            ex_id = f"{s:08x}{t:024x}"
            spool.add(Exchange(id=ex_id, started_at=1_780_000_000.0 + s * 1000 + t, method="POST",
                               path="/v1/messages", kind=CallKind.MESSAGES, request_body=body, status=200,
                               response_body=b'{"type":"message","content":[]}', model="claude-sonnet-4-5",
                               session_id=f"session-{s:02d}", usage=Usage(input_tokens=len(body) // 4,
                                                                          output_tokens=10),
                               request_bytes=len(body)))
            attribution_store.save(spool.conn, ex_id, _attribution(len(body), t))
    spool.close()
    return home


READER = r"""
import io, json, sys
from pathlib import Path

def hwm():
    line = next(x for x in Path('/proc/self/status').read_text().splitlines() if x.startswith('VmHWM'))
    return int(line.split()[1]) // 1024

from opik_cipx import cli
from opik_cipx.config import Settings
from opik_cipx.pricing import PriceTable
from opik_cipx.report import insights, stats
from opik_cipx.store.spool import Spool, connect
from opik_cipx.viewer import insights_api, queries
prices = PriceTable.builtin()
base = hwm()
what = sys.argv[1]
out, sys.stdout = sys.stdout, io.StringIO()
if what == "stats":
    for by in (None, "category", "mcp", "project", "session", "day"):
        assert cli.main(["stats", "--json"] + (["--by", by] if by else [])) == 0
        sys.stdout = io.StringIO()
elif what == "insights":
    assert cli.main(["insights", "--since", "2000-01-01", "--json"]) == 0
    doc = json.loads(sys.stdout.getvalue())
    assert doc["totals"]["calls"] == int(sys.argv[2]), doc["totals"]
    assert cli.main(["insights", "--since", "2000-01-01", "--markdown"]) == 0
else:
    spool = Spool(connect(Settings().spool_path))
    page = queries.list_calls(spool.conn, limit=500)
    pages = 1
    while page.get("next"):
        page = queries.list_calls(spool.conn, limit=500, cursor=page["next"])
        pages += 1
    for s in queries.sessions(spool.conn):
        queries.session_detail(spool.conn, s["session_id"])
        insights_api.context_growth(spool.conn, s["session_id"])
    insights_api.insights_report(spool.conn, prices, "all")
    newest = queries.list_calls(spool.conn, limit=1)["calls"][0]["id"]
    assert queries.call_detail(spool, newest, prices) is not None
    assert len(queries.request_body(spool, newest)) > 900_000
    assert pages >= 4
sys.stdout = out
print(json.dumps({"grew": hwm() - base, "peak": hwm()}))
"""


def _measure(home: Path, what: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "CIPX_HOME": str(home), "HOME": str(home), "PYTHONPATH": str(REPO / "gateway")}
    run = subprocess.run([sys.executable, "-c", READER, what, *args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("what", ["stats", "insights", "viewer"])
def test_read_path_memory_is_bounded_on_2000_calls_of_up_to_1mb(big_home: Path, what: str) -> None:
    got = _measure(big_home, what, str(SESSIONS * TURNS))
    print(f"{what}: peak grew {got['grew']} MiB, peak {got['peak']} MiB over {SESSIONS * TURNS} calls")
    assert got["grew"] < GROWTH_MIB and got["peak"] < PEAK_MIB, got

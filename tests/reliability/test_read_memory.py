"""Every read path's memory is bounded independent of the number of calls (issue 17, item 2).

One spool of 2,000 calls of 0.9-1 MB each (~1.9 GB of request bodies, stored once per chunk
as Claude Code's resent conversations are) is built per test session, straight through the
store APIs. Each read path then runs in a fresh interpreter, which reports its peak RSS
(VmHWM) before and after. Stated bound per path: peak RSS under 200 MiB in all, and under
64 MiB of growth, for reading all 2,000 calls; a path that held the calls' bodies would need
about 2 GB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from opik_cipx.attribute.analysis import analyze
from opik_cipx.model import CallKind, Exchange, Usage
from opik_cipx.pricing import PriceTable
from opik_cipx.store import attribution as attribution_store
from opik_cipx.store.spool import Spool, connect

pytestmark = pytest.mark.slow

GATEWAY_SRC = Path(__file__).resolve().parents[2] / "gateway"
CALLS = 2000
SESSIONS = 20
PEAK_MIB = 200
GROWTH_MIB = 64
MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class BigSpool:
    home: Path
    env: dict[str, str]
    body_bytes: int  # the request bodies' total size, as the wire carried them


def _conversation(session: int) -> list[dict[str, object]]:
    # ~900 KB of earlier turns, shared by every call of the session (so stored once), in
    # messages of ~22 KB: the shape content-defined chunking cuts at message boundaries.
    turns: list[dict[str, object]] = []
    for t in range(40):
        role = "user" if t % 2 == 0 else "assistant"
        text = f"session {session} turn {t} " + os.urandom(11_000).hex()
        turns.append({"role": role, "content": [{"type": "text", "text": text}]})
    return turns


def _body(session: int, turns: list[dict[str, object]], call: int) -> bytes:
    # A new last message of 10-100 KB per call, random so it is never deduplicated away.
    tail = os.urandom(5_000 + (call * 7919) % 45_000).hex()
    return json.dumps({
        "model": MODEL, "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code."},
                   {"type": "text", "text": f"Primary working directory: /work/project{session % 5}\n"}],
        "tools": [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}},
                  {"name": "mcp__files__search", "description": "Search", "input_schema": {"type": "object"}}],
        "messages": [*turns, {"role": "user", "content": [{"type": "text", "text": f"call {call} {tail}"}]}],
    }).encode()


@pytest.fixture(scope="session")
def big_spool(tmp_path_factory: pytest.TempPathFactory) -> BigSpool:
    root = tmp_path_factory.mktemp("bigspool")
    home = root / "cipx"
    env = {**os.environ, "CIPX_HOME": str(home), "HOME": str(root), "PYTHONPATH": str(GATEWAY_SRC)}
    probe = "from opik_cipx.config import Settings; print(Settings().spool_path)"
    spool_path = Path(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                     check=True).stdout.strip())
    spool_path.parent.mkdir(parents=True, exist_ok=True)
    spool = Spool(connect(spool_path))
    prices = PriceTable.builtin()
    now = time.time()
    total = 0
    per_session = CALLS // SESSIONS
    for s in range(SESSIONS):
        turns = _conversation(s)
        attr = None
        for c in range(per_session):
            i = s * per_session + c
            body = _body(s, turns, i)
            total += len(body)
            ex = Exchange(
                id=f"{i:032x}", started_at=now - (CALLS - i) * 60.0, method="POST", path="/v1/messages",
                kind=CallKind.MESSAGES, request_body=body, status=200, session_id=f"session-{s:04d}",
                response_body=b'{"type":"message","content":[{"type":"text","text":"ok"}]}', model=MODEL,
                usage=Usage(input_tokens=250_000, cache_read_input_tokens=10_000, output_tokens=40),
                request_bytes=len(body), duration_ms=1200,
            )
            spool.add(ex)
            # Attribution is the same shape across a session's calls: analyzing one per session
            # keeps the build quick, and every call still gets its rows.
            if attr is None:
                attr = analyze(ex, prices)
            attribution_store.save(spool.conn, ex.id, attr)
        spool.conn.commit()
    spool.close()
    return BigSpool(home, env, total)


_MEASURE = """
import json, sys
from pathlib import Path
def hwm_kib():
    line = next(x for x in Path('/proc/self/status').read_text().splitlines() if x.startswith('VmHWM'))
    return int(line.split()[1])
import opik_cipx.cli, opik_cipx.report.insights, opik_cipx.report.stats, opik_cipx.viewer.queries
import opik_cipx.attribute.analysis, opik_cipx.store.attribution
base = hwm_kib()
out, sys.stdout = sys.stdout, open('/dev/null', 'w')
counted = READ()
sys.stdout = out
print(json.dumps({"base_kib": base, "peak_kib": hwm_kib(), "counted": counted}))
"""


def measure(big: BigSpool, name: str, read: str, *, bounded: bool = True) -> dict[str, int]:
    """Run ``read`` (the body of a function ``READ`` returning a count) in a fresh interpreter."""
    code = "def READ():\n" + "".join(f"    {line}\n" for line in read.strip().splitlines())
    run = subprocess.run([sys.executable, "-c", code + _MEASURE], env=big.env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    figures: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    peak, grew = figures["peak_kib"] // 1024, (figures["peak_kib"] - figures["base_kib"]) // 1024
    print(f"\n{name}: peak {peak} MiB, grew {grew} MiB, counted {figures['counted']}"
          f" ({big.body_bytes / 2**30:.2f} GiB of bodies)")
    if bounded:
        assert peak < PEAK_MIB and grew < GROWTH_MIB, f"{name}: peak {peak} MiB, grew {grew} MiB"
    return figures


def test_the_big_spool_holds_what_the_bound_is_stated_for(big_spool: BigSpool) -> None:
    assert big_spool.body_bytes > CALLS * 900_000
    out = measure(big_spool, "counters", """
from opik_cipx.config import Settings
from opik_cipx.store.spool import Spool, connect
sp = Spool(connect(Settings().spool_path))
return sp.counters()["calls"]
""")
    assert out["counted"] == CALLS


def test_the_measure_catches_a_reader_that_holds_bodies(big_spool: BigSpool) -> None:
    # The bound is not vacuous: holding just 100 of the calls (what the old `explain --last N`
    # did for all N) already grows the process past it.
    out = measure(big_spool, "holding 100 calls (a reader that does not stream)", """
from opik_cipx.config import Settings
from opik_cipx.store.spool import Spool, connect
sp = Spool(connect(Settings().spool_path))
held = sp.last(100)
return len(held)
""", bounded=False)
    assert out["counted"] == 100 and (out["peak_kib"] - out["base_kib"]) // 1024 >= GROWTH_MIB


def test_explain_last_all_json_is_bounded(big_spool: BigSpool) -> None:
    out = measure(big_spool, "explain --last all --json", f"""
return opik_cipx.cli.main(['explain', '--last', '{CALLS}', '--json']) + {CALLS}
""")
    assert out["counted"] == CALLS


@pytest.mark.parametrize("by", [None, "model", "category", "mcp", "project", "session", "day", "client"])
def test_stats_is_bounded(big_spool: BigSpool, by: str | None) -> None:
    args = ["stats", "month", "--json"] + (["--by", by] if by else [])
    out = measure(big_spool, " ".join(args), f"""
import io, contextlib
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    assert opik_cipx.cli.main({args!r}) == 0
return json.loads(buf.getvalue())["totals"]["calls"]
""")
    assert out["counted"] == CALLS


@pytest.mark.parametrize("fmt", ["--json", "--markdown"])
def test_insights_is_bounded(big_spool: BigSpool, fmt: str) -> None:
    out = measure(big_spool, f"insights month {fmt}", f"""
import io, contextlib
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    assert opik_cipx.cli.main(['insights', 'month', '{fmt}']) == 0
text = buf.getvalue()
return {CALLS} if '{fmt}' == '--markdown' and text.strip() else json.loads(text)["totals"]["calls"]
""")
    assert out["counted"] == CALLS


def test_viewer_api_reading_every_call_is_bounded(big_spool: BigSpool) -> None:
    """The viewer's read layer (what each route returns): every page of the listing, every
    call's detail and body, every session with its context growth, the filters and the
    Insights page."""
    out = measure(big_spool, "viewer API, every call", """
from opik_cipx.config import Settings
from opik_cipx.pricing import PriceTable
from opik_cipx.store.spool import Spool, connect
from opik_cipx.viewer import insights_api, queries
sp = Spool(connect(Settings().spool_path))
prices = PriceTable.builtin()
seen, cursor = 0, None
while True:
    page = queries.list_calls(sp.conn, limit=queries.MAX_PAGE, cursor=cursor)
    for row in page["calls"]:
        detail = queries.call_detail(sp, row["id"], prices)
        body = queries.request_body(sp, row["id"])
        assert detail and body
        seen += 1
    cursor = page["next"]
    if cursor is None:
        break
for s in queries.sessions(sp.conn):
    assert queries.session_detail(sp.conn, s["session_id"])["calls"]
    assert insights_api.context_growth(sp.conn, s["session_id"])["calls"]
assert queries.filters(sp.conn)["models"]
assert insights_api.insights_report(sp.conn, prices, "all")["totals"]["calls"] == seen
return seen
""")
    assert out["counted"] == CALLS

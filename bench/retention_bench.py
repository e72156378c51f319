"""Retention and replay on a spool spanning simulated months: what pruning frees, what it costs.

A spool is filled with sessions grown from a real recorded Claude Code request
(tests/fixtures): each session appends turns (tool results of 0.5-20 KB, assistant
text) to the conversation, every call stored as capture stores it (chunks, attribution),
sessions spread evenly over the months before an injected "now". Then, on that clock:

* the one-off VACUUM that switches an existing file to incremental auto-vacuum (the first
  retention run does it), then that run (90 days): its time, the file size before and after;
* that ``stats`` totals and ``--by category`` are identical before and after;
* a size cap that takes half of what the kept bodies still use, pruned oldest first;
* ``replay`` over the calls that keep their bodies, per call.

Usage: python bench/retention_bench.py [--months 6] [--sessions-per-month 4] [--turns 40]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gateway"))

from opik_cipx.attribute.analysis import analyze, response_content  # noqa: E402
from opik_cipx.capture import replay  # noqa: E402
from opik_cipx.model import CallKind, Exchange, Usage  # noqa: E402
from opik_cipx.pricing import PriceTable  # noqa: E402
from opik_cipx.report import stats  # noqa: E402
from opik_cipx.store import attribution as attribution_store  # noqa: E402
from opik_cipx.store import retention  # noqa: E402
from opik_cipx.store.spool import Spool, connect  # noqa: E402

SEED = ROOT / "tests" / "fixtures" / "claude_code" / "opus48" / "02-after-bash.json"
DAY = 86400.0
NOW = 1_790_000_000.0
PRICES = PriceTable.builtin()
MB = 1024 * 1024


def session(rng: random.Random, sid: str, start: float, turns: int) -> list[Exchange]:
    doc = json.loads(SEED.read_bytes())
    out = []
    for turn in range(turns):
        size = rng.choice([300, 800, 1500, 1900]) if rng.random() < 0.85 else rng.randint(5_000, 20_000)
        tool_id = f"toolu_{sid}_{turn}"
        doc["messages"].append({"role": "assistant", "content": [
            {"type": "text", "text": f"Step {turn}: " + "checking the next file. " * rng.randint(2, 12)},
            {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": f"cat part{turn}.txt"}}]})
        doc["messages"].append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": rng.randbytes(size // 2).hex()}]})
        body = json.dumps(doc).encode()
        usage = Usage.from_api({"input_tokens": 50, "output_tokens": 120, "cache_creation_input_tokens": size // 3,
                                "cache_read_input_tokens": len(body) // 4})
        reply = {"id": f"msg_{sid}_{turn}", "type": "message", "role": "assistant", "model": "claude-opus-4-8",
                 "content": [{"type": "text", "text": f"Turn {turn} done: " + rng.randbytes(400).hex()}],
                 "stop_reason": "end_turn", "usage": usage.raw}
        ex = Exchange(id=f"{sid}-{turn:03d}", started_at=start + turn * 40, method="POST",
                      path="/v1/messages?beta=true", kind=CallKind.MESSAGES,
                      request_headers={"content-type": "application/json", "x-claude-code-session-id": sid},
                      request_body=body, status=200, response_headers={"content-type": "application/json"},
                      response_body=json.dumps(reply).encode(), session_id=sid, model="claude-opus-4-8",
                      usage=usage, request_bytes=len(body), response_bytes=len(reply), duration_ms=900.0)
        ex.cost = PRICES.price(ex.model, usage, at=ex.started_at)
        ex.stop_reason = "end_turn"
        out.append(ex)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--sessions-per-month", type=int, default=4)
    ap.add_argument("--turns", type=int, default=40)
    args = ap.parse_args()
    rng = random.Random(18)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spool.sqlite3"
        sp = Spool(connect(path))
        sent = calls = 0
        t0 = time.perf_counter()
        count = args.months * args.sessions_per_month
        for k in range(count):
            start = NOW - (k + 0.5) * (args.months * 30 * DAY) / count
            for ex in session(rng, f"s{k:03d}", start, args.turns):
                sp.add(ex)
                attribution_store.save(sp.conn, ex.id, analyze(ex, PRICES, response_content(ex)))
                sent += ex.request_bytes
                calls += 1
        sp.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"spool: {calls} calls over {args.months} months, {sent / MB:.1f} MB sent, "
              f"built in {time.perf_counter() - t0:.1f} s")
        whole = stats.Window("all", None)
        before = [stats.dumps(stats.report(sp.conn, whole, by)) for by in (None, "category", "model", "day")]
        size0 = retention.file_bytes(path)
        t2 = time.perf_counter()
        retention.ensure_incremental(sp.conn)  # what the first run does first, timed on its own
        print(f"one-off VACUUM to incremental auto-vacuum on a {size0 / MB:.1f} MB file: "
              f"{time.perf_counter() - t2:.2f} s")
        first = retention.prune(sp.conn, retention.Policy(days=90), NOW, path=path)
        print(f"first run (90 days): {first.seconds:.2f} s, "
              f"{first.pruned} calls pruned, file {size0 / MB:.2f} -> {first.bytes_after / MB:.2f} MB "
              f"({100 * (1 - first.bytes_after / size0):.0f}% smaller)")
        after = [stats.dumps(stats.report(sp.conn, whole, by)) for by in (None, "category", "model", "day")]
        print(f"stats totals and --by category/model/day identical after pruning: {before == after}")
        again = retention.prune(sp.conn, retention.Policy(days=90), NOW, path=path)
        print(f"second run, nothing to prune: {again.seconds * 1000:.0f} ms")
        ids = replay.select(sp.conn)
        t1 = time.perf_counter()
        done = replay.replay(sp, PRICES, ids)
        took = time.perf_counter() - t1
        print(f"{done.line()} {done.changes} in {took:.2f} s ({1000 * took / max(done.replayed, 1):.1f} ms per call)")
        sizes = {name: n for name, n in sp.conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 4")}
        print("largest tables now:", ", ".join(f"{k} {v / MB:.2f} MB" for k, v in sizes.items()))
        # Half of what the bodies still take: a cap pruning can meet (totals are never pruned).
        blobs = sp.conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'blobs'").fetchone()[0] or 0
        cap = retention.live_bytes(sp.conn) - blobs // 2
        capped = retention.prune(sp.conn, retention.Policy(days=90, max_bytes=cap), NOW, path=path)
        print(f"cap at {cap / MB:.2f} MB: {capped.by_size} more calls pruned oldest first in {capped.seconds:.2f} s, "
              f"live {retention.live_bytes(sp.conn) / MB:.2f} MB, file {capped.bytes_after / MB:.2f} MB, "
              f"still over the cap: {capped.over_cap}")
        sizes = {name: n for name, n in sp.conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 4")}
        print("largest tables now:", ", ".join(f"{k} {v / MB:.2f} MB" for k, v in sizes.items()))
        sp.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Drain 10,000 spooled spans to the Opik contract server; target <= 10 s.

The spans are real ones: derived from a recorded Claude Code call
(tests/fixtures/claude_code/opus/02-after-bash.json), each with its own id.
The contract server runs in a separate process (it validates every record
against the OpenAPI spec and opik's models, which costs CPU of its own) and
the shipper drains the outbox exactly as the gateway does.

    .venv/bin/python bench/ship_bench.py [--spans 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gateway"))
sys.path.insert(0, str(ROOT))

from opik_cipx.config import Settings  # noqa: E402
from opik_cipx.ship.enablement import Enablement  # noqa: E402
from opik_cipx.ship.identity import Identity  # noqa: E402
from opik_cipx.ship.outbox import Outbox  # noqa: E402
from opik_cipx.ship.shipper import Shipper  # noqa: E402
from opik_cipx.ship.span import SessionContext, analyze, llm_span, session_trace_id  # noqa: E402
from opik_cipx.ship.stage import SpanStage  # noqa: E402
from opik_cipx.ship.uuid7 import uuid7_at  # noqa: E402
from opik_cipx.store.spool import AsyncSpool  # noqa: E402

TARGET_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def template_span() -> dict[str, object]:
    from tests.test_span import PRICES, make_exchange

    facts = analyze(make_exchange("opus", "after-bash"), PRICES)
    sid = facts.exchange.session_id or "s"
    ctx = SessionContext(sid, session_trace_id(sid, facts.exchange.started_at), "bench", Identity())
    return llm_span(facts, ctx, updated_at="2026-06-01T00:00:00.000Z")


def fill(spool_path: Path, n: int, max_bytes: int) -> int:
    from opik_cipx.store.spool import Spool, connect

    base = template_span()
    spool = Spool(connect(spool_path))
    box = Outbox(spool.conn, max_bytes=max_bytes)
    start = time.time() - n / 1000
    records = []
    for i in range(n):
        record = dict(base)
        record["id"] = uuid7_at(start + i / 1000, f"bench:{i}")
        records.append(("span", record))
    box.put_many(records)
    size = box.stats()["outbox_bytes"]
    spool.close()
    return size


async def drain(spool_path: Path, url: str, settings: Settings) -> tuple[float, dict[str, object]]:
    spool = await AsyncSpool.open(spool_path)
    stage = SpanStage(settings, enablement=Enablement(Path(tempfile.mkdtemp()), env={}))
    shipper = Shipper(settings, spool, stage=stage)
    started = time.perf_counter()
    await shipper.start()
    while True:
        await asyncio.sleep(0.05)
        status = shipper.status()
        if status["queue_depth"] == 0 and status["shipped"]:
            break
    elapsed = time.perf_counter() - started
    await shipper.stop(timeout=1)
    await spool.close()
    return elapsed, status


async def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit("contract server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000)
    parser.add_argument("--no-validate", action="store_true", help="contract server skips validation")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cipx-ship-bench-"))
    os.environ["HOME"] = str(tmp)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.opik_server", "--port", str(port),
         *(["--no-validate"] if args.no_validate else [])], cwd=ROOT,
        stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "gateway")},
    )
    try:
        settings = Settings(home=tmp / ".opik-cipx", opik_base_url=f"http://127.0.0.1:{port}/api",
                            outbox_max_bytes=4 * 1024**3)
        spool_path = tmp / "spool.sqlite3"
        t0 = time.perf_counter()
        size = fill(spool_path, args.spans, settings.outbox_max_bytes)
        fill_s = time.perf_counter() - t0
        asyncio.run(wait_port(port))
        elapsed, status = asyncio.run(drain(spool_path, settings.opik_url or "", settings))
    finally:
        server.terminate()
        server.wait(timeout=10)
    rows = [
        ("spans", f"{args.spans:,}"),
        ("server validates", "no (client floor)" if args.no_validate else "OpenAPI schema + opik models"),
        ("outbox bytes", f"{size / 1024**2:,.1f} MB ({size // max(args.spans, 1):,} B/span)"),
        ("batch bound", f"1000 items / {settings.ship_batch_bytes / 1024**2:.0f} MB"),
        ("spool fill", f"{fill_s:.2f} s"),
        ("drain", f"{elapsed:.2f} s"),
        ("throughput", f"{args.spans / elapsed:,.0f} spans/s"),
        ("shipped / rejected", f"{status['shipped']} / {status['rejected']}"),
        ("target", f"<= {TARGET_S:.0f} s: {'met' if elapsed <= TARGET_S else 'MISSED'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if elapsed <= TARGET_S and status["rejected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

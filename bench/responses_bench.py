"""Codex overhead benchmark: Responses over HTTP+SSE and over WebSocket, direct and through the gateway.

Starts the fake Responses upstream (tests/support/fake_responses.py) and the real gateway
(``opik-cipx proxy`` with ``CIPX_OPENAI_UPSTREAM_URL`` at the fake) as separate processes on
loopback, and sends the same Codex-sized turns alternately direct and proxied:

* SSE: one ``POST /v1/responses`` per turn on a kept-alive connection; added time to the
  first byte of the response and to the first ``response.output_text.delta``;
* WebSocket: one connection (``permessage-deflate`` on, as Codex offers it) per path, one
  ``response.create`` text frame per turn; added time to the first event frame and to the
  first ``response.output_text.delta`` frame.

Prints p50/p99 of the added milliseconds per transport, like the Anthropic table of
bench/proxy_bench.py. Usage: python bench/responses_bench.py [--turns N] [--size KB]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
DELTA = "response.output_text.delta"


def turn_body(size: int) -> dict[str, object]:
    """A generating Responses request about ``size`` bytes long, shaped like Codex's."""
    filler = "You are Codex, a coding agent. " * 64
    items: list[dict[str, object]] = []
    while sum(len(json.dumps(i)) for i in items) < size:
        items.append({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": filler}]})
    items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
    return {"type": "response.create", "model": "gpt-5.1-codex", "stream": True, "input": items}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def sse_turn(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float]:
    t0 = time.perf_counter()
    async with session.post(url + "/v1/responses", data=body, headers={"Content-Type": "application/json",
                                                                         "originator": "codex_exec"}) as r:
        head = time.perf_counter()
        first = 0.0
        async for line in r.content:
            if not first and line.startswith(b"event: " + DELTA.encode()):
                first = time.perf_counter()
    return (head - t0) * 1000, (first - t0) * 1000


async def ws_turn(ws: aiohttp.ClientWebSocketResponse, text: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    await ws.send_str(text)
    head = first = 0.0
    while True:
        msg = await ws.receive()
        now = time.perf_counter()
        head = head or now
        kind = json.loads(msg.data)["type"]
        if kind == DELTA and not first:
            first = now
        if kind == "response.completed":
            return (head - t0) * 1000, (first - t0) * 1000


async def measure(direct: str, proxied: str, turns: int, size: int) -> dict[str, dict[str, list[float]]]:
    body = turn_body(size)
    raw, text = json.dumps({k: v for k, v in body.items() if k != "type"}).encode(), json.dumps(body)
    added: dict[str, dict[str, list[float]]] = {"sse": {"head": [], "delta": []}, "ws": {"head": [], "delta": []}}
    async with aiohttp.ClientSession() as s:
        sockets = {}
        for name, base in (("direct", direct), ("proxied", proxied)):
            sockets[name] = await s.ws_connect(base + "/v1/responses", compress=15, max_msg_size=0,
                                               headers={"originator": "codex_exec"})
        for _ in range(3):  # warm both paths: connections, pools, the capture worker
            for base in (direct, proxied):
                await sse_turn(s, base, raw)
            for ws in sockets.values():
                await ws_turn(ws, text)
        for _ in range(turns):
            d_sse, p_sse = await sse_turn(s, direct, raw), await sse_turn(s, proxied, raw)
            d_ws, p_ws = await ws_turn(sockets["direct"], text), await ws_turn(sockets["proxied"], text)
            for key, d, p in (("sse", d_sse, p_sse), ("ws", d_ws, p_ws)):
                added[key]["head"].append(p[0] - d[0])
                added[key]["delta"].append(p[1] - d[1])
        for ws in sockets.values():
            await ws.close()
    return added


def start(cmd: list[str], env: dict[str, str], port_file: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"failed to start {cmd}: {proc.communicate()[1].decode()}")
        time.sleep(0.05)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200, help="turns per transport and path")
    parser.add_argument("--size", type=int, default=74, help="request size in KB (Codex's first turn: ~74)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        env = {**os.environ, "HOME": str(tmp), "CIPX_HOME": str(tmp / "cipx"), "CIPX_PORT": "0",
               "CIPX_UPSTREAM_URL": "http://127.0.0.1:9", "PYTHONPATH": f"{ROOT / 'gateway'}{os.pathsep}{ROOT}"}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            up_port = tmp / "upstream.port"
            procs.append(start([sys.executable, "-m", "tests.support.fake_responses", "--port-file", str(up_port)],
                               env, up_port))
            direct = f"http://127.0.0.1:{up_port.read_text().strip()}"
            env["CIPX_OPENAI_UPSTREAM_URL"] = direct
            gw_port = tmp / "cipx" / "port"
            procs.append(start([sys.executable, "-m", "opik_cipx.cli", "proxy"], env, gw_port))
            proxied = f"http://127.0.0.1:{gw_port.read_text().strip()}"
            added = asyncio.run(measure(direct, proxied, args.turns, args.size * 1024))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=15)
    print(f"Responses through the gateway vs direct: {args.turns} turns of ~{args.size} KB, added ms")
    print(f"  {'transport':<10} {'first byte p50':>15} {'p99':>7} {'first delta p50':>16} {'p99':>7}")
    for key, label in (("sse", "HTTP+SSE"), ("ws", "WebSocket")):
        head, delta = added[key]["head"], added[key]["delta"]
        print(f"  {label:<10} {percentile(head, 0.5):>15.2f} {percentile(head, 0.99):>7.2f}"
              f" {percentile(delta, 0.5):>16.2f} {percentile(delta, 0.99):>7.2f}")


if __name__ == "__main__":
    main()

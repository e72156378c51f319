"""Proxy overhead benchmark: the same fake upstream, directly and through the gateway, interleaved.

Starts the fake Anthropic upstream and the real gateway (``opik-cipx proxy``) as
separate processes on loopback, then for each request size and concurrency sends
the same requests alternately direct and proxied, and prints:

* added time-to-first-byte (response head) p50/p99,
* added time-to-first-SSE-delta (first ``content_block_delta``) p50/p99,
* stream throughput ratio proxied/direct at the highest concurrency,
* the gateway's RSS idle and after the run.

With ``--nginx``, nginx (buffering off, no capture) forwards the same calls in
the same rounds: what any extra hop costs on this machine, for comparison.

With ``--pin`` (Linux), the client and the fake upstream run on one half of the
CPUs and the proxies (the gateway, its capture worker, nginx) on the other.

Usage: python bench/proxy_bench.py [--requests N] [--quick] [--nginx] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from opik_cipx.proxy.heap import IDLE_TRIM_SECONDS

ROOT = Path(__file__).resolve().parent.parent
KB = 1024
DELTA = b"event: content_block_delta"


def claude_like_body(size: int) -> bytes:
    """A streaming request about ``size`` bytes long, shaped like Claude Code's."""
    filler = "lorem ipsum dolor sit amet " * 40
    messages = []
    while sum(len(m["content"]) for m in messages) < size:
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": filler})
    messages[-1]["role"] = "user"
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024, "stream": True,
            "system": [{"type": "text", "text": "You are Claude Code."}], "messages": messages,
            "metadata": {"user_id": json.dumps({"session_id": "bench"})}}
    # Compact, as Claude Code (JSON.stringify) sends it.
    return json.dumps(body, separators=(",", ":")).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Sample:
    ttfb: float
    ttfd: float  # first content_block_delta


async def one_call(session: aiohttp.ClientSession, url: str, body: bytes) -> Sample:
    t0 = time.perf_counter()
    async with session.post(url + "/v1/messages", data=body,
                            headers={"content-type": "application/json", "x-api-key": "sk-ant-bench"}) as r:
        ttfb = time.perf_counter() - t0
        ttfd = None
        buf = b""
        async for chunk in r.content.iter_any():
            if ttfd is None:
                buf += chunk
                if DELTA in buf:
                    ttfd = time.perf_counter() - t0
                    buf = b""
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
    return Sample(ttfb * 1000, (ttfd or ttfb) * 1000)


async def capture_settled(session: aiohttp.ClientSession, proxied: str, timeout: float = 180.0) -> float:
    """Wait until the gateway has captured every call so far; the seconds it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        async with session.get(proxied + "/_cipx/status") as r:
            c = (await r.json())["capture"]
        if c["captured"] + c["dropped"] + c["errors"] >= c["submitted"] and c["pending"] == 0:
            break
        await asyncio.sleep(0.005)
    return time.perf_counter() - t0


async def latency(direct: str, proxied: str, size: int, conc: int, n: int, *, flood: bool = False,
                  reference: str | None = None) -> dict[str, list[Sample]]:
    """Rounds of ``conc`` simultaneous calls, alternately direct and proxied (and through
    the ``reference`` proxy, when given: ``--nginx``).

    Unless ``flood``, each round starts once the gateway has captured the calls
    before it. Capture is deferred work: it waits until no call is in flight, and
    Claude Code leaves it seconds between calls, where this benchmark leaves none.
    Without the pause the capture of earlier rounds runs during later ones: it
    then slows the direct rounds as much as the proxied ones, and what is measured
    is this machine's two cores shared four ways, not the proxy. The pause and the
    capture's own cost are reported beside the table. Reference rounds pause the same way.
    """
    body = claude_like_body(size)
    urls = {"direct": direct, "proxied": proxied}
    if reference is not None:
        urls["reference"] = reference
    out: dict[str, list[Sample]] = {name: [] for name in urls}
    async with contextlib.AsyncExitStack() as stack:
        sessions = {name: await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc))) for name in urls}
        admin = await stack.enter_async_context(aiohttp.ClientSession())
        # Warm every path (connection pools, the proxies' upstream pools).
        for name, url in urls.items():
            await asyncio.gather(*(one_call(sessions[name], url, body) for _ in range(conc)))
        names = list(urls)
        for i in range(n // conc):
            # Rotate which path goes first in each round so none always gets the idle CPU.
            k = i % len(names)
            for name in names[k:] + names[:k]:
                if not flood:
                    await capture_settled(admin, proxied)
                out[name].extend(await asyncio.gather(*(one_call(sessions[name], urls[name], body)
                                                        for _ in range(conc))))
    return out


async def throughput(direct: str, proxied: str, conc: int, rounds: int) -> dict[str, float]:
    body = claude_like_body(2 * KB)
    rates: dict[str, list[float]] = {"direct": [], "proxied": []}

    async def drain(session: aiohttp.ClientSession, url: str) -> int:
        async with session.post(url + "/v1/messages", data=body, headers={"x-api-key": "b", "x-bench-long": "1"}) as r:
            total = 0
            async for chunk in r.content.iter_any():
                total += len(chunk)
            return total

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        for i in range(rounds):
            order = [("direct", direct), ("proxied", proxied)]
            if i % 2:
                order.reverse()
            for name, url in order:
                t0 = time.perf_counter()
                sizes = await asyncio.gather(*(drain(s, url) for _ in range(conc)))
                rates[name].append(sum(sizes) / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def wait_for_capture(proxied: str) -> float:
    """Each cell starts with no capture backlog left over from the cell before."""

    async def settle() -> float:
        async with aiohttp.ClientSession() as s:
            return await capture_settled(s, proxied)

    return asyncio.run(settle())


def status(proxied: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(proxied + "/_cipx/status") as r:
            return await r.json()  # type: ignore[no-any-return]

    return asyncio.run(get())


def start(cmd: list[str], env: dict[str, str], port_file: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.communicate()[1]
            raise SystemExit(f"failed to start {cmd}: {err.decode() if err else ''}")
        time.sleep(0.05)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(tmp: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """nginx as a reference proxy: no capture, buffering off both ways, keep-alive upstream.

    One worker process, like the gateway's one event loop. What it adds is what
    forwarding alone costs on this machine (an extra hop, its CPU beside the
    client's and the upstream's), so it calibrates the targets.
    """
    exe = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                        if os.access(p, os.X_OK)), None)
    if exe is None:
        raise SystemExit("--nginx: no nginx found (Debian: apt-get install nginx-light)")
    port = free_port()
    prefix = tmp / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""daemon off; master_process off; worker_processes 1;
pid {prefix}/nginx.pid; error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  client_max_body_size 64m;
  client_body_buffer_size 256k;  # request bodies read in pieces as large as the gateway's reads
  upstream fake {{ server {upstream.removeprefix("http://")}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://fake; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_request_buffering off;
    }}
  }}
}}
""")
    proc = subprocess.Popen([exe, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.communicate()[1]
                raise SystemExit(f"nginx did not start: {err.decode() if err else ''}") from None
            time.sleep(0.05)


def children_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the gateway's children: the live capture worker's, and those of workers
    already ended for being idle (the kernel adds a reaped child's CPU to its parent's tally)."""
    reaped = proc.cpu_times()
    live = sum(sum(k.cpu_times()[:2]) for k in proc.children(recursive=True))
    return live + reaped.children_user + reaped.children_system


def rss_with_children(proc: psutil.Process) -> tuple[float, str]:
    """MiB resident in ``proc`` and its children (the capture worker), and each one's share."""
    total = proc.memory_info().rss
    parts = [f"gateway {total / 2**20:.1f}"]
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a child that just ended
            rss = child.memory_info().rss
            total += rss
            parts.append(f"{' '.join(child.cmdline()[-1:])} {rss / 2**20:.1f}")
    return total / 2**20, ", ".join(parts)


def pin(pid: int, cpus: set[int]) -> None:
    """Keep a process, its threads and its children on ``cpus`` (Linux)."""
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for thread in proc.threads():
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(thread.id, cpus)


def split_cpus() -> tuple[set[int], set[int]]:
    """This machine's CPUs in two halves: one for the client and the fake upstream, one for the proxies."""
    if not hasattr(os, "sched_getaffinity"):
        raise SystemExit("--pin: needs Linux (sched_setaffinity)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin: needs at least two CPUs")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def long_stream_script(path: Path) -> None:
    # Requests with the x-bench-long header get a ~1 MB streamed answer; others a short one.
    long_text = "token " * 170_000
    path.write_text(json.dumps({
        "rules": [{"when": {"has_header": "x-bench-long"}, "turn": {"text": long_text}}],
        "default": {"text": "ok " * 20},
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256, help="requests per path per cell")
    parser.add_argument("--quick", action="store_true", help="fewer requests, for a smoke run")
    parser.add_argument("--sizes", default="50,200,1024", help="request body sizes in KB")
    parser.add_argument("--conc", default="1,8,32", help="concurrency levels")
    parser.add_argument("--no-throughput", action="store_true", help="skip the c=32 long-stream throughput phase")
    parser.add_argument("--nginx", action="store_true",
                        help="also forward through nginx (no capture), interleaved, as a reference")
    parser.add_argument("--pin", action="store_true",
                        help="client and fake upstream on half the CPUs, the proxies on the other half")
    parser.add_argument("--flood", action="store_true",
                        help="start each round at once, without waiting for the gateway to capture the last one")
    args = parser.parse_args()
    n = 64 if args.quick else args.requests

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        env = {**os.environ, "HOME": str(tmp), "CIPX_HOME": str(tmp / "cipx"), "CIPX_PORT": "0",
               "PYTHONPATH": f"{ROOT / 'gateway'}{os.pathsep}{ROOT}"}
        script = tmp / "script.json"
        long_stream_script(script)
        up_port = tmp / "upstream.port"
        procs: list[subprocess.Popen[bytes]] = []  # ended however the run ends
        try:
            procs.append(start([sys.executable, "-m", "tests.support.fake_anthropic", "--port", "0",
                                "--port-file", str(up_port), "--script", str(script)], env, up_port))
            direct = f"http://127.0.0.1:{up_port.read_text().strip()}"
            env["CIPX_UPSTREAM_URL"] = direct
            gw_port = tmp / "cipx" / "port"
            procs.append(start([sys.executable, "-m", "opik_cipx.cli", "proxy"], env, gw_port))
            proxied = f"http://127.0.0.1:{gw_port.read_text().strip()}"
            gw_proc = psutil.Process(procs[-1].pid)
            reference = None
            if args.nginx:
                nginx, reference = start_nginx(tmp, direct)
                procs.append(nginx)
            time.sleep(0.5)
            if args.pin:
                # As on a workstation: the real upstream is remote and Claude Code is mostly
                # waiting, so the proxy's CPU does not compete with theirs.
                near, far = split_cpus()
                pin(os.getpid(), near)
                pin(procs[0].pid, near)
                for proc in procs[1:]:
                    pin(proc.pid, far)
            rss_idle = gw_proc.memory_info().rss / 2**20
            capture_cpu0 = children_cpu(gw_proc)
            rows = []
            for size in (int(k) * KB for k in args.sizes.split(",")):
                for conc in (int(c) for c in args.conc.split(",")):
                    wait_for_capture(proxied)
                    res = asyncio.run(latency(direct, proxied, size, conc, max(n, conc * 4), flood=args.flood,
                                              reference=reference))
                    d, p = res["direct"], res["proxied"]
                    row = [f"{size // KB} KB", str(conc)]
                    for attr in ("ttfb", "ttfd"):
                        dv = [getattr(s, attr) for s in d]
                        pv = [getattr(s, attr) for s in p]
                        for q in (50, 99):
                            row.append(f"{percentile(pv, q) - percentile(dv, q):+.2f}")
                    if reference is not None:
                        dv, rv = [s.ttfb for s in d], [s.ttfb for s in res["reference"]]
                        row += [f"{percentile(rv, q) - percentile(dv, q):+.2f}" for q in (50, 99)]
                    row.append(f"{percentile([s.ttfb for s in d], 50):.2f}")
                    rows.append(row)
            wait_for_capture(proxied)
            capture_cpu = children_cpu(gw_proc) - capture_cpu0
            captured = status(proxied)["capture"]["captured"]
            tp = None if args.no_throughput else asyncio.run(throughput(direct, proxied, 32, 3 if args.quick else 6))
            rss_after = gw_proc.memory_info().rss / 2**20
            both_after = rss_with_children(gw_proc)
            time.sleep(IDLE_TRIM_SECONDS + 5)  # the gateway gives freed memory back once idle
            rss_rested = gw_proc.memory_info().rss / 2**20
            time.sleep(max(0.0, 60 - (IDLE_TRIM_SECONDS + 5)))
            both_60 = rss_with_children(gw_proc)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=20)

    header = ["body", "conc", "+TTFB p50 ms", "+TTFB p99 ms", "+TTFD p50 ms", "+TTFD p99 ms"]
    if args.nginx:
        header += ["nginx +TTFB p50 ms", "nginx +TTFB p99 ms"]
    header.append("direct TTFB p50 ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    if tp is not None:
        ratio = tp["proxied"] / tp["direct"]
        print(f"stream throughput at c=32: direct {tp['direct'] / 2**20:.1f} MiB/s, "
              f"proxied {tp['proxied'] / 2**20:.1f} MiB/s, ratio {ratio:.3f}")
    print(f"gateway RSS: idle {rss_idle:.1f} MiB, after run {rss_after:.1f} MiB, "
          f"{IDLE_TRIM_SECONDS + 5:g} s later {rss_rested:.1f} MiB")
    # Issue 18's targets count the capture worker too: <= 120 MiB after the run, <= 80 MiB 60 s later.
    print(f"gateway + capture worker RSS: after run {both_after[0]:.1f} MiB ({both_after[1]}), "
          f"60 s later {both_60[0]:.1f} MiB ({both_60[1]})")
    if args.pin:
        print(f"pinned: client and fake upstream on CPUs {sorted(near)}, proxies on CPUs {sorted(far)}")
    print(f"capture (worker process, between rounds{'' if not args.flood else ' and during them: --flood'}): "
          f"{captured} calls, {capture_cpu / max(captured, 1) * 1000:.2f} ms CPU per call on average")


if __name__ == "__main__":
    main()

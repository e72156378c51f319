"""Status-line latency: what Claude Code waits for after every assistant message.

Starts a real gateway (``opik-cipx ensure-running``) in a temporary ``CIPX_HOME`` in front of
the fake Anthropic upstream, makes a few calls in one session so the capture worker writes its
summary, then pipes a status-line JSON (the shape Claude Code sends) into the configured
command N times and prints wall-time percentiles, beside ``python -c pass`` (the interpreter's
own start-up, the floor for any Python command) measured in the same rounds:

* ``status-line script``: what ``setup``/``sync`` configure (``opik-cipx-statusline.sh``: sh
  builtins and one ``cat`` of the segment the worker pre-rendered),
* ``statusline``: the Python command, our segment alone,
* ``statusline + user's line``: wrapping a user status-line command (``echo``),
* ``gateway down``: the same after ``stop`` (must stay as quick, and say ``offline``).

Usage: python bench/statusline_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SESSION = "5b4c3a29-0000-4000-8000-000000000001"


def timed(cmd: list[str], payload: bytes, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, input=payload, env=env, capture_output=True, timeout=30)
    return (time.perf_counter() - started) * 1000, done.stdout.decode().strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cipx-statusline-bench-"))
    env = {**os.environ, "HOME": str(tmp), "CIPX_HOME": str(tmp / ".opik-cipx"), "CIPX_PORT": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "gateway"), str(ROOT)])}
    port_file = tmp / "upstream.port"
    upstream = subprocess.Popen([sys.executable, "-m", "tests.support.fake_anthropic", "--port-file", str(port_file),
                                 "--header", "anthropic-ratelimit-unified-status=allowed",
                                 "--header", "anthropic-ratelimit-unified-5h-utilization=0.12",
                                 "--header", "anthropic-ratelimit-unified-7d-utilization=0.71"],
                                env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    cli = [sys.executable, "-m", "opik_cipx.cli"]
    try:
        while not port_file.exists():
            time.sleep(0.05)
        env["CIPX_UPSTREAM_URL"] = f"http://127.0.0.1:{port_file.read_text().strip()}"
        subprocess.run([*cli, "ensure-running", "-q"], env=env, check=True)
        port = int((tmp / ".opik-cipx" / "port").read_text())
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True,
                           "messages": [{"role": "user", "content": "hello " * 2000}]}).encode()
        for _ in range(3):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=body, headers={
                "Content-Type": "application/json", "x-api-key": "k", "X-Claude-Code-Session-Id": SESSION})
            with opener.open(req, timeout=30) as resp:
                resp.read()
        summary = tmp / ".opik-cipx" / "sessions" / f"{SESSION}.json"
        deadline = time.monotonic() + 30
        while not summary.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        payload = json.dumps({"session_id": SESSION, "model": {"id": "claude-sonnet-4-5", "display_name": "Sonnet"},
                              "workspace": {"current_dir": str(tmp)}, "cost": {"total_cost_usd": 0.01}}).encode()
        wrapped = tmp / ".opik-cipx" / "statusline-wrapped.json"
        sys.path.insert(0, str(ROOT / "gateway"))
        from opik_cipx.claude.launcher import render_statusline_script

        script = tmp / "opik-cipx-statusline.sh"
        script.write_text(render_statusline_script())
        wrapped_sh = tmp / ".opik-cipx" / "statusline-wrapped.sh"
        cases: list[tuple[str, list[str], dict[str, str], bool]] = [
            ("python -c pass (floor)", [sys.executable, "-c", "pass"], env, False),
            ("status-line script", ["sh", str(script)], env, False),
            ("status-line script + user's", ["sh", str(script)], env, True),
            ("statusline", [*cli, "statusline"], env, False),
            ("statusline + user's line", [*cli, "statusline"], env, True),
        ]
        results: dict[str, list[float]] = {name: [] for name, *_ in cases}
        shown: dict[str, str] = {}
        for _ in range(args.runs):  # interleaved: each round runs every case once
            for name, cmd, case_env, wrap in cases:
                if wrap:
                    wrapped.write_text(json.dumps({"command": "echo my own line"}))
                    wrapped_sh.write_text("echo my own line\n")
                else:
                    for path in (wrapped, wrapped_sh):
                        if path.exists():
                            path.unlink()
                ms, out = timed(cmd, payload, case_env)
                results[name].append(ms)
                shown[name] = out
        subprocess.run([*cli, "stop"], env=env, capture_output=True)
        for path in (wrapped, wrapped_sh):
            if path.exists():
                path.unlink()
        results["script, gateway down"] = [timed(["sh", str(script)], payload, env)[0] for _ in range(args.runs)]
        shown["script, gateway down"] = timed(["sh", str(script)], payload, env)[1]
        results["gateway down"] = [timed([*cli, "statusline"], payload, env)[0] for _ in range(args.runs)]
        shown["gateway down"] = timed([*cli, "statusline"], payload, env)[1]
    finally:
        subprocess.run([*cli, "stop"], env=env, capture_output=True)
        upstream.terminate()
        upstream.wait(timeout=10)
    print(f"{'case':<28} {'p50 ms':>8} {'p95 ms':>8}  output")
    for name, values in results.items():
        values.sort()
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
        print(f"{name:<28} {statistics.median(values):>8.1f} {p95:>8.1f}  {shown[name].replace(chr(10), ' | ')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

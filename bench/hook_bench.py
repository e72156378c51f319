"""Hook latency as Claude Code sees it: wall time of one hook command, stdin to exit.

    .venv/bin/python bench/hook_bench.py [--runs 200] [--cold-runs 5]

Runs the plugin's launcher (plugin/cipx-launch) exactly as hooks/hooks.json does, against a
gateway in a temp state dir (port 0, an upstream nobody needs). The "binary" is a wrapper
that runs ``python -m opik_cipx.cli`` from this checkout, so Python start-up counts wherever
the launcher cannot avoid it. Rows:

* PreToolUse, gateway alive -- the keep-alive fast path, decided in sh (target <= 15 ms p50);
* PreToolUse through Python -- the same event with the fast path bypassed, for comparison;
* SessionStart, gateway alive -- registration of a session;
* SessionStart, cold -- no gateway: the hook starts one, waits for it to answer, registers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gateway"))

from opik_cipx.config import Settings  # noqa: E402
from opik_cipx.ops import daemon  # noqa: E402

LAUNCHER = ROOT / "plugin" / "cipx-launch"


def make_binary(home: Path) -> Path:
    binary = home / ".opik-cipx" / "bin" / "opik-cipx"
    binary.parent.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join([str(ROOT / "gateway"), str(ROOT)])
    binary.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(pythonpath)} exec {shlex.quote(sys.executable)} -m opik_cipx.cli \"$@\"\n")
    binary.chmod(0o755)
    return binary


def timed(argv: list[str], env: dict[str, str], payload: bytes) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=payload, env=env, capture_output=True)
    elapsed = (time.perf_counter() - t0) * 1000.0
    if proc.returncode != 0 or proc.stdout:
        raise SystemExit(f"{argv} misbehaved: rc={proc.returncode} stdout={proc.stdout[:200]!r}")
    return elapsed


def summary(name: str, samples: list[float]) -> tuple[str, int, float, float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return name, len(samples), statistics.median(samples), p95, max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cipx-hook-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        project = Path(tmp) / "project"
        project.mkdir()
        binary = make_binary(home)
        env = {
            "HOME": str(home),
            "PATH": "/usr/bin:/bin",
            "CIPX_PORT": "0",
            "CIPX_UPSTREAM_URL": "http://127.0.0.1:9",
            "CLAUDE_PLUGIN_ROOT": str(ROOT),
        }
        os.environ.update({k: v for k, v in env.items() if k != "PATH"})
        os.environ.pop("CIPX_HOME", None)
        settings = Settings()

        def payload(event: str, n: int) -> bytes:
            base = {"session_id": f"bench-{n}", "transcript_path": str(project / "t.jsonl"), "cwd": str(project), "hook_event_name": event}
            if event == "SessionStart":
                base["source"] = "startup"
            else:
                base.update(tool_name="Bash", tool_input={"command": "ls"}, tool_use_id=f"toolu_{n}")
            return json.dumps(base).encode()

        def hook(event: str, cli_event: str, via_python: bool = False) -> Callable[[int], float]:
            argv = [str(binary) if via_python else str(LAUNCHER), "hook", "claude_code", cli_event]
            return lambda n: timed(argv, env, payload(event, n))

        rows = []
        try:
            daemon.ensure_running(settings, timeout=30)
            pre = hook("PreToolUse", "pre-tool-use")
            for n in range(5):  # warm the page cache
                pre(n)
            rows.append(summary("PreToolUse, gateway alive (launcher fast path)", [pre(n) for n in range(args.runs)]))
            slow = hook("PreToolUse", "pre-tool-use", via_python=True)
            rows.append(summary("PreToolUse through Python (no fast path)", [slow(n) for n in range(max(5, args.runs // 10))]))
            start = hook("SessionStart", "session-start")
            rows.append(summary("SessionStart, gateway alive", [start(n) for n in range(max(5, args.runs // 10))]))
            cold: list[float] = []
            for n in range(args.cold_runs):
                daemon.stop(settings)
                cold.append(start(1000 + n))
                if not daemon.probe(settings).alive:
                    raise SystemExit("the cold SessionStart hook did not leave a gateway running")
            rows.append(summary("SessionStart, cold (starts the gateway)", cold))
        finally:
            daemon.stop(settings)

    width = max(len(r[0]) for r in rows)
    print(f"{'hook'.ljust(width)}  {'runs':>5}  {'p50 ms':>8}  {'p95 ms':>8}  {'max ms':>8}")
    for name, runs, p50, p95, worst in rows:
        print(f"{name.ljust(width)}  {runs:>5}  {p50:>8.1f}  {p95:>8.1f}  {worst:>8.1f}")


if __name__ == "__main__":
    main()

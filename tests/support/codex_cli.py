"""Run the real Codex CLI in a loopback-only network namespace against the fake Responses upstream.

As for Claude Code (tests/support/claude_code.py): a temp HOME whose ``.codex/config.toml`` points
``openai_base_url`` at 127.0.0.1 with analytics off, the fake started inside the namespace, an
optional ``middle`` (the gateway) between them, and every request the fake saw read back.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .claude_code import REPO_ROOT, run_in_netns
from .fake_responses import Answer, load_recorded

CODEX_PREFIX = Path(os.environ.get("CIPX_TEST_CODEX_PREFIX", "/work/cache/codex"))


def codex_bin() -> Path | None:
    path = CODEX_PREFIX / "node_modules" / ".bin" / "codex"
    return path if path.exists() else None


def needs_codex() -> pytest.MarkDecorator:
    return pytest.mark.skipif(codex_bin() is None, reason=f"Codex CLI not installed under {CODEX_PREFIX}")


def config_toml(base_url: str | None) -> str:
    """The test HOME's Codex config: no telemetry, no update checks, the base URL when given."""
    lines = []
    if base_url is not None:
        lines.append(f'openai_base_url = "{base_url}"')
    lines += ['check_for_update_on_startup = false', "", "[analytics]", "enabled = false", "",
              "[otel]", 'exporter = "none"', ""]
    return "\n".join(lines)


@dataclass
class CodexWorkspace:
    root: Path
    home: Path
    project: Path

    @classmethod
    def create(cls, root: Path) -> CodexWorkspace:
        home, project = root / "home", root / "project"
        (home / ".codex").mkdir(parents=True, exist_ok=True)
        project.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        return cls(root, home, project)

    def write(self, relative: str, text: str) -> Path:
        target = self.project / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target


@dataclass
class CodexRun:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    requests: list[dict[str, Any]]
    upstream_log: str
    middle_log: str
    isolation: str
    work: Path = field(repr=False, default=Path())


def codex_env(ws: CodexWorkspace) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(ws.home),
        "TMPDIR": str(ws.root / "tmp"),
        "CODEX_HOME": str(ws.home / ".codex"),
        "CODEX_API_KEY": "sk-test-codex",
        "RUST_LOG": "warn",
        "NO_COLOR": "1",
    }


def run_codex(
    ws: CodexWorkspace,
    prompt: str,
    *,
    script: Sequence[Answer] = (),
    websocket: bool = True,
    middle: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> CodexRun:
    """``codex exec`` once in a fresh namespace. ``middle`` is a bash snippet that starts something
    between Codex and the fake (``$UPSTREAM_URL`` is the fake) and writes its base URL (with
    ``/v1``) to ``$MIDDLE_URL_FILE``."""
    binary = codex_bin()
    if binary is None:
        raise FileNotFoundError(f"Codex CLI not installed under {CODEX_PREFIX}")
    work = ws.root / "session"
    work.mkdir(parents=True, exist_ok=True)
    record_dir = work / "records"
    script_path = work / "script.json"
    script_path.write_text(json.dumps([a.__dict__ for a in script]))
    q = shlex.quote
    fake_cmd = [sys.executable, "-m", "tests.support.fake_responses", "--port-file", str(work / "upstream.port"),
                "--record-dir", str(record_dir), "--script", str(script_path)]
    if not websocket:
        fake_cmd.append("--no-websocket")
    config = ws.home / ".codex" / "config.toml"
    lines = [
        "set -u",
        "cleanup() { for p in $(jobs -p); do kill \"$p\" 2>/dev/null; done; wait 2>/dev/null; }",
        "trap cleanup EXIT",
        "wait_file() { for _ in $(seq 300); do [ -s \"$1\" ] && return 0; sleep 0.1; done; return 1; }",
        f"cd {q(str(REPO_ROOT))}",
        f"PYTHONPATH={q(str(REPO_ROOT))} {' '.join(map(q, fake_cmd))} >{q(str(work / 'upstream.log'))} 2>&1 &",
        f"wait_file {q(str(work / 'upstream.port'))} || exit 90",
        f"export UPSTREAM_URL=http://127.0.0.1:$(cat {q(str(work / 'upstream.port'))})",
        "BASE_URL=$UPSTREAM_URL/v1",
    ]
    if middle is not None:
        lines += [
            f"export MIDDLE_URL_FILE={q(str(work / 'middle.url'))}",
            f"export MIDDLE_LOG={q(str(work / 'middle.log'))}",
            middle,
            f"wait_file {q(str(work / 'middle.url'))} || exit 91",
            f"BASE_URL=$(cat {q(str(work / 'middle.url'))})",
        ]
    lines += [
        f"printf 'openai_base_url = \"%s\"\\n' \"$BASE_URL\" > {q(str(config))}",
        f"cat {q(str(work / 'base.toml'))} >> {q(str(config))}",
        "start=$(date +%s.%N)",
        f"(cd {q(str(ws.project))} && timeout -k 5 {timeout:g} {q(str(binary))} exec --skip-git-repo-check"
        f" {' '.join(map(q, extra_args))} {q(prompt)} </dev/null >{q(str(work / 'out'))} 2>{q(str(work / 'err'))});"
        f" echo $? >{q(str(work / 'rc'))}",
        f"echo \"$start $(date +%s.%N)\" > {q(str(work / 'times'))}",
    ]
    (work / "base.toml").write_text(config_toml(None))
    t0 = time.monotonic()
    _rc, _out, err, label = run_in_netns("\n".join(lines) + "\n", env=codex_env(ws), cwd=ws.project,
                                         timeout=timeout + 60)
    elapsed = time.monotonic() - t0

    def read(name: str) -> str:
        path = work / name
        return path.read_text(errors="replace") if path.exists() else ""

    times = read("times").split()
    seconds = float(times[1]) - float(times[0]) if len(times) == 2 else elapsed
    rc_text = read("rc").strip()
    return CodexRun(
        rc=int(rc_text) if rc_text else -1,
        stdout=read("out"),
        stderr=read("err") + (f"\n[session stderr]\n{err}" if err.strip() else ""),
        seconds=seconds,
        requests=load_recorded(record_dir) if record_dir.exists() else [],
        upstream_log=read("upstream.log"),
        middle_log=read("middle.log"),
        isolation=label,
        work=work,
    )


def generating(requests: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The recorded requests that asked for output (warm-ups left out)."""
    return [r for r in requests if not r.get("warmup")]

"""Record the real Codex CLI's requests against the fake Responses upstream, as fixtures.

``python -m tests.support.codex_record tests/fixtures/codex`` re-records every scenario in
SCENARIOS (each in a fresh namespace and temp HOME) into ``<out>/<name>/``: the fake's
record files (``NNN.json`` meta with headers and the events answered, ``NNN.body`` bytes).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .codex_cli import CodexWorkspace, run_codex
from .fake_responses import Answer

SHELL_JS = 'const r = await tools.exec_command({cmd: "echo cipx-shell-ok"});\ntext(r);'
AGENTS_MD = "# Project rules\n\nAlways answer in haiku.\n"


@dataclass(frozen=True)
class Scenario:
    prompt: str
    script: tuple[Answer, ...]
    websocket: bool
    agents_md: bool = False


SCENARIOS = {
    "plain_ws": Scenario("say hi", (Answer(text="hello from fake"),), True),
    "plain_http": Scenario("say hi", (Answer(text="hello from fake"),), False),
    "shell_ws": Scenario("run echo please", (Answer(custom=("exec", SHELL_JS)), Answer(text="shell said ok")), True),
    "shell_http": Scenario("run echo please", (Answer(custom=("exec", SHELL_JS)), Answer(text="shell said ok")), False),
    "agents_ws": Scenario("say hi", (Answer(text="hello from fake"),), True, agents_md=True),
}


def record(name: str, out: Path) -> int:
    sc = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix=f"codex-{name}-") as tmp:
        ws = CodexWorkspace.create(Path(tmp))
        if sc.agents_md:
            ws.write("AGENTS.md", AGENTS_MD)
        run = run_codex(ws, sc.prompt, script=sc.script, websocket=sc.websocket)
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run.work / "records", target)
        return run.rc


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("tests/fixtures/codex")
    names = argv[1:] or list(SCENARIOS)
    return max(record(name, out) for name in names)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

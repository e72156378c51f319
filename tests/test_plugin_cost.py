"""``/opik-cipx:cost`` under the real Claude Code CLI: one allowed invocation of ``insights --markdown``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.support.claude_code import Workspace, run_claude_session
from tests.support.fake_anthropic import Turn
from tests.support.gateway import free_port
from tests.test_plugin import (  # noqa: F401  stop_gateway: a fixture
    BARE_PATH,
    ROOT,
    checkout,
    install_binary,
    install_plugin,
    needs_cli,
    stop_gateway,
)


def test_the_cost_command_file_runs_insights_markdown_as_its_one_allowed_invocation() -> None:
    """Static check (fast lane): one `!` line, the launcher, no shell chaining Claude Code would refuse."""
    text = (ROOT / "commands" / "cost.md").read_text()
    runs = [line for line in text.splitlines() if line.startswith("!`")]
    assert runs == ['!`"${CLAUDE_PLUGIN_ROOT}/plugin/cipx-launch" insights --markdown`']
    assert "allowed-tools: Bash(${CLAUDE_PLUGIN_ROOT}/plugin/cipx-launch:*)" in text
    for chain in (";", "&&", "||", "|", "$("):
        assert chain not in runs[0], chain


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
@pytest.mark.usefixtures("stop_gateway")
def test_cost_shows_the_insights_of_the_captured_session(tmp_path: Path, isolated_home: Path) -> None:
    ws = Workspace.create(tmp_path)
    install_plugin(ws.home, checkout(tmp_path / "repo"))
    binary = install_binary(ws.home)
    port = free_port()
    result = run_claude_session(
        ws,
        [["-p", "hello", "--output-format", "json"], ["-p", "/opik-cipx:cost"]],
        script=[Turn(text="hello from the fake"), Turn(text="cost relayed")],
        middle=f'export CIPX_UPSTREAM_URL="$UPSTREAM_URL"; echo http://127.0.0.1:{port} > "$MIDDLE_URL_FILE"',
        extra_env={"CIPX_PORT": str(port), "PATH": BARE_PATH},
        after=f"{shlex.quote(str(binary))} stop",
    )
    first, second = result.calls
    assert first.rc == 0, first.stderr + result.upstream_log
    assert second.rc == 0, second.stderr + result.upstream_log
    last = result.messages_requests()[-1].body.decode()
    # The command's output went into the prompt: the report of the first call, priced.
    shown = last.split("## opik-cipx cost", 1)[1].split("Show the report above", 1)[0]
    assert "opik-cipx insights" in shown and re.search(r"over [1-9][0-9]* calls", shown), shown
    assert "| kind | target | calls | uses | saving |" in shown, shown
    # Refusal wording, not a word a report may hold (a skill is called fewer-permission-prompts).
    for refusal in ("permission denied", "permission to", "not allowed", "requires approval", "no spool"):
        assert refusal not in shown.lower(), shown

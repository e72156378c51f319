"""``/opik-cipx:install``: with the binary missing, the plugin runs its own install.sh against a
release mirror, then ``sync`` -- one allowed invocation, under the real ``claude -p``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.claude_code import Workspace, run_claude_session
from tests.support.fake_anthropic import Turn
from tests.support.release import REPO, ReleaseMirror
from tests.test_plugin import BARE_PATH, LAUNCHER, ROOT, checkout, install_plugin, needs_cli

VERSION = "0.1.0"
# The stand-in release binary logs each command it runs to $CIPX_HOME/calls.log.
COMMANDS = "ensure-running stop status sync"


def test_the_install_command_is_one_allowed_invocation_of_the_launcher() -> None:
    text = (ROOT / "commands" / "install.md").read_text()
    runs = [line for line in text.splitlines() if line.startswith("!`")]
    assert runs == ['!`"${CLAUDE_PLUGIN_ROOT}/plugin/cipx-launch" install $ARGUMENTS`']
    assert "allowed-tools: Bash(${CLAUDE_PLUGIN_ROOT}/plugin/cipx-launch:*)" in text
    for chain in (";", "&&", "||", "|", "$("):
        assert chain not in runs[0], chain


def _plugin(tmp_path: Path) -> Path:
    """The launcher with the install.sh of the checkout beside it, as a cloned marketplace has it."""
    repo = checkout(tmp_path / "repo")
    shutil.copy2(ROOT / "install.sh", repo / "install.sh")
    return repo


def _mirror_tree(root: Path) -> Path:
    """A static release mirror: /dl/<tag>/<file>, and the releases API's latest as a file."""
    mirror = ReleaseMirror(root=root / "dl")
    mirror.publish(VERSION, commands=COMMANDS)
    api = root / "api" / "repos" / REPO / "releases"
    api.mkdir(parents=True)
    (api / "latest").write_text(json.dumps({"tag_name": f"v{VERSION}"}))
    return root


def _run_launcher(home: Path, *args: str, env: dict[str, str] | None = None,
                  launcher: Path = LAUNCHER) -> subprocess.CompletedProcess[str]:
    full = {"HOME": str(home), "PATH": BARE_PATH, **(env or {})}
    return subprocess.run([str(launcher), *args], env=full, capture_output=True, text=True, timeout=60)


def test_install_with_the_binary_present_only_syncs(isolated_home: Path, tmp_path: Path) -> None:
    binary = isolated_home / ".opik-cipx" / "bin" / "opik-cipx"
    binary.parent.mkdir(parents=True)
    log = tmp_path / "calls"
    binary.write_text(f'#!/bin/sh\necho "$@" >> {log}\n[ "$1" = version ] && echo "opik-cipx 9.9.9"\nexit 0\n')
    binary.chmod(0o755)
    run = _run_launcher(isolated_home, "install")
    assert run.returncode == 0, run.stderr
    assert f"already installed: {binary} (opik-cipx 9.9.9)" in run.stdout
    assert "(opik-cipx sync exit code 0)" in run.stdout
    assert log.read_text().split("\n")[:2] == ["version", "sync"]


def test_install_without_an_install_sh_says_how_to_install_by_hand(isolated_home: Path, tmp_path: Path) -> None:
    lone = tmp_path / "plugin" / "cipx-launch"
    lone.parent.mkdir()
    shutil.copy2(LAUNCHER, lone)
    run = _run_launcher(isolated_home, "install", launcher=lone)
    assert run.returncode == 0 and "has no install.sh" in run.stdout and "install.sh | bash" in run.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="install.sh needs curl")
def test_install_runs_install_sh_then_sync_and_reports_a_failure_as_text(isolated_home: Path, tmp_path: Path) -> None:
    repo = _plugin(tmp_path)
    root = _mirror_tree(tmp_path / "mirror")
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split("port ")[1].split()[0])
        env = {"CIPX_REPO": REPO, "CIPX_RELEASE_BASE_URL": f"http://127.0.0.1:{port}/dl",
               "CIPX_API_BASE_URL": f"http://127.0.0.1:{port}/api", "NO_PROXY": "127.0.0.1",
               "TMPDIR": str(tmp_path), "PATH": os.environ.get("PATH", BARE_PATH)}
        missing = _run_launcher(isolated_home, "install", "v9.9.9", env=env, launcher=repo / "plugin" / "cipx-launch")
        assert missing.returncode == 0
        assert "release v9.9.9 has no" in missing.stdout and "install.sh exit code 4: nothing was installed" in missing.stdout
        run = _run_launcher(isolated_home, "install", env=env, launcher=repo / "plugin" / "cipx-launch")
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    assert run.returncode == 0, run.stderr
    entry = isolated_home / ".opik-cipx" / "bin" / "opik-cipx"
    assert f"(opik-cipx install.sh exit code 0: installed {entry})" in run.stdout, run.stdout
    assert "(opik-cipx sync exit code 0)" in run.stdout
    assert (isolated_home / ".opik-cipx" / "calls.log").read_text().splitlines()[-1] == f"{VERSION} sync"


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
@pytest.mark.skipif(shutil.which("curl") is None, reason="install.sh needs curl")
def test_the_install_command_installs_the_missing_binary_and_syncs_under_claude(tmp_path: Path, isolated_home: Path) -> None:
    ws = Workspace.create(tmp_path)
    install_plugin(ws.home, _plugin(tmp_path))
    root = _mirror_tree(tmp_path / "mirror")
    q = shlex.quote
    # The mirror is served inside the session's loopback-only namespace, where claude runs.
    mirror = (f"{q(sys.executable)} -u -m http.server 0 --bind 127.0.0.1 --directory {q(str(root))}"
              f" > {q(str(tmp_path / 'mirror.log'))} 2>&1 &\n"
              f"for _ in $(seq 100); do grep -q 'port ' {q(str(tmp_path / 'mirror.log'))} && break; sleep 0.1; done\n"
              f"mirror_port=$(sed -n 's/.*port \\([0-9]*\\).*/\\1/p' {q(str(tmp_path / 'mirror.log'))} | head -n 1)\n"
              'export CIPX_RELEASE_BASE_URL="http://127.0.0.1:$mirror_port/dl"'
              ' CIPX_API_BASE_URL="http://127.0.0.1:$mirror_port/api"\n'
              'echo "$UPSTREAM_URL" > "$MIDDLE_URL_FILE"')
    result = run_claude_session(
        ws, [["-p", "/opik-cipx:install"]], script=[Turn(text="installed, synced")], middle=mirror,
        extra_env={"CIPX_REPO": REPO, "NO_PROXY": "127.0.0.1", "PATH": BARE_PATH},
    )
    (call,) = result.calls
    assert call.rc == 0, call.stderr + result.upstream_log
    entry = ws.home / ".opik-cipx" / "bin" / "opik-cipx"
    assert entry.is_symlink() and os.access(entry, os.X_OK)  # the binary landed where the launcher looks
    assert (ws.home / ".opik-cipx" / "calls.log").read_text().splitlines()[-1] == f"{VERSION} sync"
    body = result.messages_requests()[-1].body.decode()
    # The command's output went into the prompt (JSON-escaped in the body, as the cost test reads it).
    report = body.split("## opik-cipx install", 1)[1].split("Tell the user", 1)[0]
    assert "checksum verified" in report and f"install.sh exit code 0: installed {entry}" in report, report
    assert "(opik-cipx sync exit code 0)" in report
    for refusal in ("permission", "not allowed", "requires approval"):
        assert refusal not in report.lower(), report

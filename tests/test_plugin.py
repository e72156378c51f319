"""The repository as a Claude Code plugin marketplace, driven by the real Claude Code CLI."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opik_cipx.claude.provision import render_launcher
from opik_cipx.config import Settings
from opik_cipx.ops import daemon
from opik_cipx.store.sessions import SessionTable
from opik_cipx.store.spool import Spool, connect
from tests.support.claude_code import (
    Workspace,
    claude_bin,
    claude_env,
    claude_missing_reason,
    needs_claude_code,
    run_claude_session,
    run_in_netns,
)
from tests.support.fake_anthropic import Turn
from tests.support.gateway import free_port

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "plugin" / "cipx-launch"
PLUGIN_PARTS = (".claude-plugin", "hooks", "commands", "plugin")
PLUGIN_ID = "opik-cipx@opik-enterprise"
needs_cli = needs_claude_code()
# The binary on no PATH of ours: the test decides where (if anywhere) a binary is.
BARE_PATH = "/usr/bin:/bin"


def checkout(dest: Path) -> Path:
    """The plugin as a clone of the repository has it (the dev checkout's .venv is 600 MB and
    `marketplace add` of a directory copies it whole into the plugin cache)."""
    for part in PLUGIN_PARTS:
        shutil.copytree(ROOT / part, dest / part)
    return dest


def install_binary(home: Path) -> Path:
    """Stands in for the PyInstaller binary in its install location: the CLI from this checkout."""
    binary = home / ".opik-cipx" / "bin" / "opik-cipx"
    binary.parent.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join([str(ROOT / "gateway"), str(ROOT)])
    binary.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(pythonpath)} exec {shlex.quote(sys.executable)} -m opik_cipx.cli \"$@\"\n")
    binary.chmod(0o755)
    return binary


def claude_cli(home: Path, *args: str) -> tuple[int, str, str]:
    binary = claude_bin()
    assert binary is not None, claude_missing_reason()
    script = " ".join(shlex.quote(a) for a in (str(binary), *args))
    rc, out, err, _ = run_in_netns(script, env=claude_env(home, extra={"PATH": BARE_PATH}), cwd=home, timeout=120)
    return rc, out, err


def install_plugin(home: Path, repo: Path) -> None:
    rc, out, err = claude_cli(home, "plugin", "marketplace", "add", str(repo))
    assert rc == 0, out + err
    rc, out, err = claude_cli(home, "plugin", "install", PLUGIN_ID)
    assert rc == 0, out + err


@pytest.fixture
def stop_gateway(isolated_home: Path) -> Iterator[None]:
    yield
    try:
        daemon.stop(Settings(home=isolated_home / ".opik-cipx"), timeout=10)
    except daemon.DaemonError:
        pass


# --- the launcher ------------------------------------------------------------------------------


def test_the_committed_launcher_is_the_rendered_one() -> None:
    assert LAUNCHER.read_text() == render_launcher()
    assert os.access(LAUNCHER, os.X_OK)


def run_launcher(home: Path, *args: str, binary: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {"HOME": str(home), "PATH": BARE_PATH}
    if binary is not None:
        env["OPIK_CIPX_BIN"] = str(binary)
    return subprocess.run([str(LAUNCHER), *args], input=b'{"session_id": "s"}', env=env, capture_output=True, timeout=30)


def recorder(tmp_path: Path) -> tuple[Path, Path]:
    fake = tmp_path / "fake-bin"
    calls = tmp_path / "calls"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    return fake, calls


@pytest.mark.slow
def test_keep_alive_with_a_live_gateway_never_starts_the_binary(tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, stop_gateway: None) -> None:
    monkeypatch.setenv("CIPX_PORT", "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "gateway"), str(ROOT)]))
    settings = Settings()
    daemon.ensure_running(settings, timeout=20)
    fake, calls = recorder(tmp_path)
    for event in ("pre-tool-use", "user-prompt-submit"):
        run = run_launcher(isolated_home, "hook", "claude_code", event, binary=fake)
        assert run.returncode == 0 and run.stdout == b""
    assert not calls.exists()
    # Session start always goes to the binary (it registers the session).
    run_launcher(isolated_home, "hook", "claude_code", "session-start", binary=fake)
    assert calls.read_text().split() == ["hook", "claude_code", "session-start"]


def test_keep_alive_goes_to_the_binary_when_the_pidfile_is_stale_or_the_pid_reused(tmp_path: Path, isolated_home: Path) -> None:
    home = isolated_home / ".opik-cipx"
    home.mkdir()
    (home / "port").write_text("9909\n")
    fake, calls = recorder(tmp_path)
    # Our own pid is alive, but with other start ticks it is not the gateway that wrote the file.
    ticks = daemon.start_ticks(os.getpid())
    (home / "gateway.pid").write_text(f"{os.getpid()} {int(ticks or 0) + 1} 0.0\n")
    run_launcher(isolated_home, "hook", "claude_code", "pre-tool-use", binary=fake)
    (home / "gateway.pid").write_text("999999999 1 0.0\n")
    run_launcher(isolated_home, "hook", "claude_code", "pre-tool-use", binary=fake)
    assert calls.read_text().splitlines() == ["hook claude_code pre-tool-use"] * 2


def test_a_missing_binary_gives_an_install_hint_on_stderr_and_exit_0(isolated_home: Path) -> None:
    for args in (("hook", "claude_code", "session-start"), ("status",)):
        run = run_launcher(isolated_home, *args)
        assert run.returncode == 0 and run.stdout == b""
        assert b"not found" in run.stderr and b"install.sh" in run.stderr


def test_the_launcher_finds_the_binary_in_the_install_location_and_passes_exit_codes(isolated_home: Path) -> None:
    install_binary(isolated_home)
    run = run_launcher(isolated_home, "status")
    assert run.returncode == 1 and b"not running" in run.stdout


# --- the real CLI ----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
def test_manifests_validate_and_the_plugin_installs_without_load_errors(tmp_path: Path, isolated_home: Path) -> None:
    repo = checkout(tmp_path / "repo")
    rc, out, err = claude_cli(isolated_home, "plugin", "validate", str(repo))
    assert rc == 0 and "Validation passed" in out, out + err
    rc, out, err = claude_cli(isolated_home, "plugin", "validate", "--strict", str(repo / ".claude-plugin" / "plugin.json"))
    assert rc == 0 and "Validation passed" in out, out + err
    rc, out, err = claude_cli(isolated_home, "plugin", "validate", "--strict", str(repo))
    assert rc == 0, out + err
    install_plugin(isolated_home, repo)
    rc, out, err = claude_cli(isolated_home, "plugin", "list", "--json")
    assert rc == 0, err
    (entry,) = [p for p in json.loads(out) if p["id"] == PLUGIN_ID]
    assert entry["enabled"] is True and not entry.get("errors") and not entry.get("loadErrors"), entry


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
def test_a_session_starts_the_gateway_through_the_hooks_and_is_captured_under_its_id(tmp_path: Path, isolated_home: Path, stop_gateway: None) -> None:
    ws = Workspace.create(tmp_path)
    assert ws.home == isolated_home
    install_plugin(ws.home, checkout(tmp_path / "repo"))
    binary = install_binary(ws.home)
    port = free_port()
    result = run_claude_session(
        ws,
        [["-p", "hello", "--output-format", "json"], ["-p", "/opik-cipx:status"],
         ["-p", "/opik-cipx:tracing debug"], ["-p", "/opik-cipx:viewer"]],
        script=[Turn(text="hello from the fake"), Turn(text="status relayed"), Turn(text="tracing relayed"),
                Turn(text="viewer relayed")],
        # No process in the middle: the SessionStart hook must bring the gateway up by itself.
        middle=f'export CIPX_UPSTREAM_URL="$UPSTREAM_URL"; echo http://127.0.0.1:{port} > "$MIDDLE_URL_FILE"',
        extra_env={"CIPX_PORT": str(port), "PATH": BARE_PATH},
        after=f"{shlex.quote(str(binary))} status --json; {shlex.quote(str(binary))} stop",
    )
    first, second, third, fourth = result.calls
    assert first.rc == 0, first.stderr + result.upstream_log
    reply = first.json()
    assert reply["result"] == "hello from the fake"
    status = json.loads(result.after_output.split("\nopik-cipx: ")[0])
    assert status["exit_code"] == 0 and status["port"] == port and status["sessions"] >= 1

    spool = Spool(connect(ws.home / ".opik-cipx" / "spool" / "spool.sqlite3"))
    try:
        calls = spool.calls(kind="messages")
        assert calls and {c.session_id for c in calls} >= {reply["session_id"]}
        session = SessionTable(spool.conn).get(reply["session_id"])
    finally:
        spool.close()
    assert session is not None and session.cwd == str(ws.project) and session.source == "startup"

    # /opik-cipx:status ran `opik-cipx status` and put its output into the prompt.
    assert second.rc == 0, second.stderr
    last = next(r.body.decode() for r in result.messages_requests() if b"## opik-cipx status" in r.body)
    assert "opik-cipx: running (pid" in last and f"port {port}" in last
    # One allowed invocation: its output, and nothing else (no permission refusal), is in the prompt.
    shown = last.split("## opik-cipx status", 1)[1].split("Show the status above", 1)[0]
    assert "(opik-cipx status exit code 0: running and healthy)" in shown
    for refusal in ("permission", "not allowed", "requires approval"):
        assert refusal not in shown.lower(), shown

    # The plugin's skill is offered to the model in every session.
    first_body = result.messages_requests()[0].body.decode()
    assert "opik-cipx:opik-cipx" in first_body and "which repairs are safe to run" in first_body

    # /opik-cipx:tracing debug wrote the project's marker; /opik-cipx:viewer printed the live URL.
    assert third.rc == 0 and fourth.rc == 0, third.stderr + fourth.stderr
    bodies = [r.body.decode() for r in result.messages_requests()]
    tracing = next(b for b in bodies if "## opik-cipx tracing" in b)
    assert "on, with debug logging" in tracing and (ws.project / ".claude" / ".opik-tracing-enabled").read_text() == "debug\n"
    viewer = next(b for b in bodies if "## opik-cipx viewer" in b)
    assert f"http://127.0.0.1:{port}/_cipx/viewer/?token=" in viewer


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
def test_with_the_binary_missing_the_session_still_completes(tmp_path: Path, isolated_home: Path) -> None:
    ws = Workspace.create(tmp_path)
    install_plugin(ws.home, checkout(tmp_path / "repo"))
    result = run_claude_session(
        ws, [["-p", "hello", "--output-format", "json"]], script=[Turn(text="fine without it")], extra_env={"PATH": BARE_PATH}
    )
    (call,) = result.calls
    assert call.rc == 0, call.stderr + result.upstream_log
    assert call.json()["result"] == "fine without it"
    assert not (ws.home / ".opik-cipx" / "gateway.pid").exists()

"""sync: the one idempotent repair, and the CIPX_DISABLED kill switch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.claude.settings_json import PLUGIN_ID
from opik_cipx.claude.sync import sync
from opik_cipx.config import Settings
from opik_cipx.ops import daemon, supervisor


class Recorder:
    def __init__(self) -> None:
        self.installed: list[list[str]] = []
        self.removed = 0

    def install(self, settings: Settings, binary: list[str]) -> supervisor.Outcome:
        self.installed.append(binary)
        return supervisor.Outcome(True, False, "unit written")

    def remove(self) -> supervisor.Outcome:
        self.removed += 1
        return supervisor.Outcome(True, False, "unit removed")


def _settings_json(home: Path) -> dict[str, Any]:
    return json.loads((home / ".claude" / "settings.json").read_text())


def test_sync_wires_claude_code_and_says_nothing_changed_the_second_time(isolated_home: Path) -> None:
    rec = Recorder()
    first = sync(Settings(), managed=(), bring_up=False, supervise=rec.install, unsupervise=rec.remove)
    assert first.ok and any("ANTHROPIC_BASE_URL=http://127.0.0.1:9909" in line for line in first.lines)
    data = _settings_json(isolated_home)
    assert data["env"]["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9909" and "SessionStart" in data["hooks"]
    second = sync(Settings(), managed=(), bring_up=False, supervise=rec.install, unsupervise=rec.remove)
    assert any("already point at the gateway" in line for line in second.lines), second.lines
    assert _settings_json(isolated_home) == data and len(rec.installed) == 2


def test_with_the_plugin_enabled_only_the_base_url_is_added(isolated_home: Path) -> None:
    path = isolated_home / ".claude" / "settings.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"enabledPlugins": {PLUGIN_ID: True}}))
    sync(Settings(), managed=(), bring_up=False, supervise=Recorder().install)
    data = _settings_json(isolated_home)
    assert data["env"] == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9909"} and "hooks" not in data
    hooks = isolated_home / ".claude" / "hooks"
    assert sorted(p.name for p in hooks.iterdir()) == ["opik-cipx-statusline.sh"], "the plugin brings its own hooks"


def test_a_base_url_from_managed_settings_is_never_fought_over(isolated_home: Path, tmp_path: Path) -> None:
    managed = tmp_path / "managed-settings.json"
    managed.write_text(json.dumps({"enabledPlugins": {PLUGIN_ID: True},
                                   "env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:7777"}}))
    report = sync(Settings(), managed=(managed,), bring_up=False, supervise=Recorder().install)
    assert any("comes from managed settings" in line for line in report.lines)
    assert not (isolated_home / ".claude" / "settings.json").exists()


def test_the_kill_switch_takes_out_the_base_url_and_the_supervisor_and_unsetting_it_restores(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = isolated_home / ".claude" / "settings.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://corp-proxy.example"}, "model": "opus"}))
    rec = Recorder()
    sync(Settings(), managed=(), bring_up=False, supervise=rec.install, unsupervise=rec.remove)
    assert _settings_json(isolated_home)["env"]["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9909"

    monkeypatch.setenv("CIPX_DISABLED", "1")
    report = sync(Settings(), managed=(), bring_up=False, supervise=rec.install, unsupervise=rec.remove)
    assert report.lines[0].startswith("CIPX_DISABLED is set") and rec.removed == 1
    data = _settings_json(isolated_home)
    assert data["env"]["ANTHROPIC_BASE_URL"] == "https://corp-proxy.example", "the user's own URL is back"
    assert "SessionStart" in data["hooks"] and data["model"] == "opus"
    again = sync(Settings(), managed=(), bring_up=False, supervise=rec.install, unsupervise=rec.remove)
    assert any("no ANTHROPIC_BASE_URL of ours" in line for line in again.lines)

    monkeypatch.delenv("CIPX_DISABLED")
    sync(Settings(), managed=(), bring_up=False, supervise=rec.install, unsupervise=rec.remove)
    assert _settings_json(isolated_home)["env"]["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9909"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opik_cipx.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_proxy_exits_at_once_when_disabled(gateway_env: dict[str, str]) -> None:
    out = _cli({**gateway_env, "CIPX_DISABLED": "1"}, "proxy")
    assert out.returncode == 0 and "CIPX_DISABLED" in out.stderr
    assert daemon.probe(Settings()).state is daemon.State.STOPPED


@pytest.mark.slow
def test_sync_and_restart_from_the_command_line(gateway_env: dict[str, str], isolated_home: Path) -> None:
    out = _cli(gateway_env, "sync")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "opik-cipx: gateway: running (pid" in out.stdout and "opik-cipx: supervisor:" in out.stdout
    first = daemon.probe(Settings()).pid
    assert first is not None
    again = json.loads(_cli(gateway_env, "sync", "--json").stdout)
    assert again["ok"] and any("already point at the gateway" in line for line in again["lines"])
    assert daemon.probe(Settings()).pid == first, "a healthy gateway is left running"

    restarted = _cli(gateway_env, "restart")
    assert restarted.returncode == 0, restarted.stderr
    second = daemon.probe(Settings()).pid
    assert second is not None and second != first and f"stopped pid {first}" in restarted.stdout

    # The kill switch never stops the running gateway: sessions already pointed at it finish.
    off = _cli({**gateway_env, "CIPX_DISABLED": "1"}, "sync")
    assert off.returncode == 0 and f"pid {second} keeps serving" in off.stdout
    assert daemon.probe(Settings()).pid == second
    assert "ANTHROPIC_BASE_URL" not in _settings_json(isolated_home).get("env", {})


def test_the_users_status_line_is_wrapped_and_given_back(isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from opik_cipx.report.statusline import WRAPPED_FILE

    path = isolated_home / ".claude" / "settings.json"
    path.parent.mkdir()
    theirs = {"type": "command", "command": "~/bin/my-line.sh", "padding": 1}
    path.write_text(json.dumps({"statusLine": theirs, "model": "opus"}, indent=2))
    sync(Settings(), managed=(), bring_up=False, supervise=Recorder().install)
    data = _settings_json(isolated_home)
    assert data["statusLine"]["command"].endswith("/opik-cipx-statusline.sh")
    assert (isolated_home / ".opik-cipx" / "statusline-wrapped.sh").read_text() == "~/bin/my-line.sh\n"
    saved = json.loads((isolated_home / ".opik-cipx" / WRAPPED_FILE).read_text())
    assert saved == {"command": "~/bin/my-line.sh", "original": theirs}
    sync(Settings(), managed=(), bring_up=False, supervise=Recorder().install)  # idempotent: still theirs saved
    assert json.loads((isolated_home / ".opik-cipx" / WRAPPED_FILE).read_text())["command"] == "~/bin/my-line.sh"

    monkeypatch.setenv("OPIK_CIPX_STATUSLINE", "off")
    sync(Settings(), managed=(), bring_up=False, supervise=Recorder().install)
    assert _settings_json(isolated_home)["statusLine"] == theirs
    monkeypatch.delenv("OPIK_CIPX_STATUSLINE")

    sync(Settings(), managed=(), bring_up=False, supervise=Recorder().install)
    edited = _settings_json(isolated_home)
    edited["model"] = "sonnet"  # edited since: uninstall takes ours out and puts theirs back
    path.write_text(json.dumps(edited, indent=2))
    from opik_cipx.claude.provision import uninstall_plan

    uninstall_plan(Settings()).apply()
    assert _settings_json(isolated_home)["statusLine"] == theirs

    managed = tmp_path / "managed.json"
    managed.write_text(json.dumps({"statusLine": {"type": "command", "command": "corp-line"}}))
    sync(Settings(), managed=(managed,), bring_up=False, supervise=Recorder().install)
    assert _settings_json(isolated_home)["statusLine"] == theirs, "a managed status line is never fought over"

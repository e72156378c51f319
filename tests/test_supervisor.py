"""The OS supervisor: unit and plist contents, install/remove idempotence, the no-manager fallback."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opik_cipx.config import Settings
from opik_cipx.ops import supervisor
from opik_cipx.ops.supervisor import Supervisor, render_plist, render_unit


def test_the_unit_restarts_on_failure_runs_supervised_and_carries_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIPX_PORT", "9911")
    monkeypatch.setenv("OPIK_CIPX_API_KEY", "sk-secret")
    monkeypatch.setenv("CIPX_HOME", "/home/u/state dir")
    unit = render_unit(supervisor.supervised_argv(["/opt/opik cipx/opik-cipx"]), supervisor.passed_env())
    lines = unit.splitlines()
    assert 'ExecStart="/opt/opik cipx/opik-cipx" proxy --supervised' in lines
    assert "Restart=on-failure" in lines and "UMask=0077" in lines and "WantedBy=default.target" in lines
    assert "Environment=CIPX_PORT=9911" in lines and 'Environment="CIPX_HOME=/home/u/state dir"' in lines
    assert "sk-secret" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    path = tmp_path / supervisor.UNIT_NAME
    path.write_text(render_unit(supervisor.supervised_argv([sys.executable, "-m", "opik_cipx.cli"]), {"CIPX_PORT": "1"}))
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    # verify also complains about the host's own units in a container; ours must not be named.
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if supervisor.UNIT_NAME in line]
    assert complaints == [], complaints


def test_the_plist_keeps_it_alive_unless_it_exits_cleanly(tmp_path: Path) -> None:
    doc = plistlib.loads(render_plist(["/usr/local/bin/opik-cipx", "proxy", "--supervised"], {"CIPX_PORT": "9909"},
                                      tmp_path / "launchd.log"))
    assert doc["Label"] == supervisor.AGENT_LABEL and doc["RunAtLoad"] is True
    assert doc["KeepAlive"] == {"SuccessfulExit": False} and doc["Umask"] == 0o077
    assert doc["ProgramArguments"][-2:] == ["proxy", "--supervised"] and doc["EnvironmentVariables"] == {"CIPX_PORT": "9909"}


def test_paths_per_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    linux = Supervisor.for_platform(tmp_path, "linux")
    mac = Supervisor.for_platform(tmp_path, "darwin")
    assert linux is not None and linux.path == tmp_path / ".config/systemd/user/opik-cipx.service"
    assert mac is not None and mac.path == tmp_path / "Library/LaunchAgents/com.comet.opik-cipx.plist"
    assert Supervisor.for_platform(tmp_path, "win32") is None


def _fake_systemctl(bin_dir: Path, state: str) -> Path:
    """A stand-in for systemctl on PATH that records its arguments (this machine has no user manager)."""
    log = bin_dir / "systemctl.log"
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n'
                      f'case "$*" in *is-system-running*) echo {state}; [ {state} = running ];; esac\n')
    script.chmod(0o755)
    return log


def test_without_a_user_manager_the_unit_is_written_and_the_hooks_keep_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: object
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_systemctl(bin_dir, "offline")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sup = Supervisor("systemd", tmp_path / "units" / supervisor.UNIT_NAME)
    settings: Settings = make_settings()  # type: ignore[operator]
    first = supervisor.install(settings, ["/bin/opik-cipx"], sup)
    assert first.changed and not first.active and "no systemd user manager" in first.message
    assert sup.path.stat().st_mode & 0o777 == 0o600
    again = supervisor.install(settings, ["/bin/opik-cipx"], sup)
    assert not again.changed and not again.active
    assert "enable" not in log.read_text() and "start" not in log.read_text().replace("is-system-running", "")


def test_with_a_user_manager_it_is_enabled_started_and_restarted_only_on_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: object
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_systemctl(bin_dir, "running")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sup = Supervisor("systemd", tmp_path / "units" / supervisor.UNIT_NAME)
    settings: Settings = make_settings()  # type: ignore[operator]
    assert supervisor.install(settings, ["/bin/opik-cipx"], sup).active
    calls = [line for line in log.read_text().splitlines() if "is-system-running" not in line]
    assert calls == ["--user daemon-reload", "--user enable opik-cipx.service",
                     "--user try-restart opik-cipx.service", "--user start opik-cipx.service"]
    log.write_text("")
    assert supervisor.install(settings, ["/bin/opik-cipx"], sup).active
    calls = [line for line in log.read_text().splitlines() if "is-system-running" not in line]
    assert "--user try-restart opik-cipx.service" not in calls and "--user start opik-cipx.service" in calls
    log.write_text("")
    removed = supervisor.remove(sup)
    assert removed.changed and not sup.path.exists()
    assert "--user disable opik-cipx.service" in log.read_text()
    assert not supervisor.remove(sup).changed, "removing twice is a no-op"

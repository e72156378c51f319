"""setup / uninstall: a plan first, then exactly that; user content survives byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opik_cipx.claude import provision
from opik_cipx.claude.provision import (
    MARKER,
    ProvisionError,
    setup_plan,
    uninstall_plan,
)
from opik_cipx.cli import main
from opik_cipx.config import Settings

# Four-space indent, no trailing newline, unicode, key order that is not sorted: a re-serialising
# uninstall would not give these bytes back.
ORIGINAL = """{
    "permissions": {"allow": ["Bash(ls:*)"], "deny": []},
    "model": "opus",
    "env": {"FOO": "bär"},
    "hooks": {
        "PreToolUse": [
            {"matcher": "Bash", "hooks": [{"type": "command", "command": "~/.claude/hooks/mine.sh"}]}
        ]
    },
    "alwaysThinkingEnabled": true
}"""
HAND_HOOK = "#!/bin/sh\n# my own hook\necho hi >&2\n"


@pytest.fixture
def claude(isolated_home: Path) -> Path:
    d = isolated_home / ".claude"
    (d / "hooks").mkdir(parents=True)
    (d / "settings.json").write_text(ORIGINAL)
    (d / "hooks" / "mine.sh").write_text(HAND_HOOK)
    return d


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_setup_apply_uninstall_round_trip_gives_back_the_original_bytes(claude: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(claude)
    assert main(["setup"]) == 0
    out = capsys.readouterr().out
    assert '"ANTHROPIC_BASE_URL": "http://127.0.0.1:9909"' in out  # the snippet to paste
    assert (claude / "settings.json").read_text() == ORIGINAL, "setup without --apply leaves settings.json alone"
    for spec in provision.HOOKS:
        script = claude / "hooks" / spec.script
        assert script.read_text().splitlines()[0] == MARKER and os.access(script, os.X_OK)

    assert main(["setup", "--apply"]) == 0
    merged = json.loads((claude / "settings.json").read_text())
    assert merged["env"] == {"FOO": "bär", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9909"}
    assert list(merged) == ["permissions", "model", "env", "hooks", "alwaysThinkingEnabled", "statusLine"]
    assert merged["statusLine"]["command"].endswith("/opik-cipx-statusline.sh")
    assert merged["hooks"]["PreToolUse"][0]["hooks"][0]["command"] == "~/.claude/hooks/mine.sh"
    assert "opik-cipx-pre-tool-use.sh" in merged["hooks"]["PreToolUse"][1]["hooks"][0]["command"]
    assert "opik-cipx-session-start.sh" in merged["hooks"]["SessionStart"][0]["hooks"][0]["command"]
    assert (claude / "settings.json.opik-cipx.bak").read_text() == ORIGINAL
    applied = (claude / "settings.json").read_bytes()
    assert applied.startswith(b'{\n    "permissions"'), "the file's own indentation is kept"

    capsys.readouterr()
    assert main(["setup", "--apply"]) == 0
    assert capsys.readouterr().out.startswith("nothing to change")
    assert (claude / "settings.json").read_bytes() == applied

    assert main(["uninstall", "--yes"]) == 0
    assert snapshot(claude) == before
    assert not (isolated_home / ".opik-cipx").exists()


def test_dry_runs_change_nothing(claude: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(isolated_home)
    assert main(["setup", "--apply", "--dry-run"]) == 0
    plan_text = capsys.readouterr().out
    assert "back up" in plan_text and "merge into" in plan_text and "write hook script" in plan_text
    assert snapshot(isolated_home) == before
    main(["setup", "--apply"])
    after_setup = snapshot(isolated_home)
    assert main(["uninstall", "--dry-run"]) == 0
    assert "remove managed hook script" in capsys.readouterr().out
    assert snapshot(isolated_home) == after_setup


def test_uninstall_after_user_edits_removes_only_our_entries_and_restores_the_old_base_url(claude: Path) -> None:
    (claude / "settings.json").write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://corp-proxy.example"}}, indent=2) + "\n")
    settings = Settings()
    setup_plan(settings, apply_settings=True).apply()
    edited = json.loads((claude / "settings.json").read_text())
    edited["statusLine"] = {"type": "command", "command": "echo hi"}
    edited["hooks"]["PreToolUse"].append({"matcher": "Edit", "hooks": [{"type": "command", "command": "lint.sh"}]})
    (claude / "settings.json").write_text(json.dumps(edited, indent=2) + "\n")

    uninstall_plan(settings).apply()
    left = json.loads((claude / "settings.json").read_text())
    assert left == {
        "env": {"ANTHROPIC_BASE_URL": "https://corp-proxy.example"},
        "statusLine": {"type": "command", "command": "echo hi"},
        "hooks": {"PreToolUse": [{"matcher": "Edit", "hooks": [{"type": "command", "command": "lint.sh"}]}]},
    }
    assert (claude / "hooks" / "mine.sh").read_text() == HAND_HOOK
    assert not any(provision.is_managed(p) for p in (claude / "hooks").iterdir())


def test_a_settings_file_setup_created_is_removed_by_uninstall(claude: Path) -> None:
    (claude / "settings.json").unlink()
    settings = Settings()
    setup_plan(settings, apply_settings=True).apply()
    assert json.loads((claude / "settings.json").read_text())["env"]["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
    uninstall_plan(settings).apply()
    assert not (claude / "settings.json").exists()


def test_uninstall_without_a_record_still_takes_our_entries_out(claude: Path, isolated_home: Path) -> None:
    settings = Settings()
    setup_plan(settings, apply_settings=True).apply()
    (isolated_home / ".opik-cipx" / "provision.json").unlink()
    uninstall_plan(settings).apply()
    assert json.loads((claude / "settings.json").read_text()) == json.loads(ORIGINAL)


def test_invalid_settings_json_is_refused_before_anything_is_written(claude: Path) -> None:
    (claude / "settings.json").write_text("{ broken")
    with pytest.raises(ProvisionError, match="not valid JSON"):
        setup_plan(Settings(), apply_settings=True)
    assert (claude / "settings.json").read_text() == "{ broken"


def test_a_hand_written_file_at_our_script_path_is_never_overwritten(claude: Path) -> None:
    (claude / "hooks" / "opik-cipx-session-start.sh").write_text(HAND_HOOK)
    with pytest.raises(ProvisionError, match="not written by opik-cipx"):
        setup_plan(Settings(), apply_settings=False)
    assert (claude / "hooks" / "opik-cipx-session-start.sh").read_text() == HAND_HOOK


def test_the_written_hook_script_runs_the_binary_and_exits_0_without_it(claude: Path, tmp_path: Path, isolated_home: Path) -> None:
    fake = tmp_path / "fake-opik-cipx"
    record = tmp_path / "args"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\ncat > {record}.stdin\nexit 7\n')
    fake.chmod(0o755)
    setup_plan(Settings(), apply_settings=False, binary=fake).apply()
    script = claude / "hooks" / "opik-cipx-session-start.sh"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(isolated_home)}
    run = subprocess.run(["sh", str(script), "hook", "claude_code", "session-start"], input=b'{"session_id": "s"}', env=env, capture_output=True)
    assert run.returncode == 0 and run.stdout == b""
    assert record.read_text().split() == ["hook", "claude_code", "session-start"]
    assert (tmp_path / "args.stdin").read_bytes() == b'{"session_id": "s"}'

    fake.unlink()
    run = subprocess.run(["sh", str(script), "hook", "claude_code", "session-start"], input=b"{}", env=env, capture_output=True)
    assert run.returncode == 0 and run.stdout == b"" and b"not found" in run.stderr


def test_frozen_binary_names_the_stable_entry_point_not_its_versioned_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opik_cipx.claude import provision

    bundle = tmp_path / ".opik-cipx-releases" / "0.2.0-1" / "opik-cipx"
    bundle.parent.mkdir(parents=True)
    bundle.write_text("")
    link = tmp_path / "opik-cipx"
    link.symlink_to(bundle)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(bundle))
    monkeypatch.setattr(sys, "argv", [str(link), "setup"])
    assert provision.default_binary() == link
    # Run by bare name from PATH: the PATH entry, which is the symlink too.
    monkeypatch.setattr(sys, "argv", ["opik-cipx", "setup"])
    monkeypatch.setenv("PATH", str(tmp_path))
    link.chmod(0o755)
    bundle.chmod(0o755)
    assert provision.default_binary() == link


def _state_dir_with_user_files(home: Path) -> Path:
    state = home / ".opik-cipx"
    for name in ("spool/spool.sqlite3", "spool/spool.sqlite3-wal", "spool/capture.journal", "logs/cipx.log",
                 "logs/capture-worker.log", "port", "viewer-token", "provision.json", "bin/opik-cipx",
                 "bin/.opik-cipx-releases/0.1-1/opik-cipx", "config.toml", "notes/mine.txt", "spool/my-export.csv"):
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_text("x")
    return state


def test_uninstall_removes_only_what_the_gateway_wrote(claude: Path, isolated_home: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    state = _state_dir_with_user_files(isolated_home)
    assert main(["uninstall", "--yes"]) == 0
    left = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file())
    assert left == ["config.toml", "notes/mine.txt", "spool/my-export.csv"]
    assert not (state / "bin").exists() and not (state / "logs").exists()
    out = capsys.readouterr().out
    assert "note: left in" in out and "config.toml" in out and "notes" in out


def test_uninstall_asks_first_and_can_keep_the_captured_calls(claude: Path, isolated_home: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = _state_dir_with_user_files(isolated_home)
    assert main(["uninstall"]) == 1, "no TTY and no --yes: nothing is deleted"
    assert "--yes" in capsys.readouterr().err and (state / "spool" / "spool.sqlite3").exists()
    assert main(["uninstall", "--keep-data"]) == 0
    assert (state / "spool" / "spool.sqlite3").exists() and (state / "logs" / "cipx.log").exists()
    assert not (state / "port").exists() and not (state / "bin").exists()


@pytest.mark.parametrize("where", ["home", "root"])
def test_uninstall_refuses_a_state_dir_that_is_home_or_root(isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], where: str) -> None:
    monkeypatch.setenv("CIPX_HOME", str(isolated_home) if where == "home" else "/")
    (isolated_home / "precious.txt").write_text("mine")
    assert main(["uninstall", "--yes"]) == 1
    assert "refusing to clean it up" in capsys.readouterr().err
    assert (isolated_home / "precious.txt").exists()


def test_uninstall_removes_the_supervisor_unit(claude: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    unit = isolated_home / ".config" / "systemd" / "user" / "opik-cipx.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\n")
    (unit.parent / "someone-else.service").write_text("[Service]\n")
    assert main(["uninstall", "--yes"]) == 0
    assert not unit.exists() and (unit.parent / "someone-else.service").exists()

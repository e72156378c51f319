"""Codex's config.toml pointed at the gateway and restored exactly (codex/config_toml.py, codex/wiring.py)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from opik_cipx.cli import main
from opik_cipx.codex import sync_codex, unsync_codex, unwire_text, wire_text
from opik_cipx.codex.config_toml import ConfigError
from opik_cipx.codex.wiring import WiringError, codex_config_path
from opik_cipx.config import Settings

USER_CONFIG = (
    "# my Codex settings\r\n"
    'model = "gpt-5.1-codex"   # pinned on purpose\r\n'
    "approval_policy='never'\r\n"
    "\r\n"
    "[analytics]\r\n"
    "enabled = false\r\n"
    "\r\n"
    "[mcp_servers.docs]\r\n"
    'command = "npx"\r\n'
    'args = ["-y", "docs-mcp"]\r\n'
)
URL = "http://127.0.0.1:9909/v1"


def test_wire_sets_a_top_level_key_and_keeps_every_other_byte() -> None:
    out = wire_text(USER_CONFIG, {"openai_base_url": URL})
    parsed = tomllib.loads(out)
    assert parsed["openai_base_url"] == URL and parsed["mcp_servers"]["docs"]["command"] == "npx"
    assert "openai_base_url" not in parsed["analytics"]  # top level, not inside a table
    assert out.replace(f'openai_base_url = "{URL}"\n', "") == USER_CONFIG
    assert wire_text(out, {"openai_base_url": URL}) == out  # idempotent
    again = wire_text(out, {"openai_base_url": "http://127.0.0.1:1/v1"})
    assert tomllib.loads(again)["openai_base_url"] == "http://127.0.0.1:1/v1"


def test_unwire_gives_back_the_users_value_or_leaves_their_change() -> None:
    mine = 'openai_base_url = "https://proxy.corp/v1"\n'
    wired = wire_text(mine, {"openai_base_url": URL})
    assert unwire_text(wired, {"openai_base_url": "https://proxy.corp/v1"}, {"openai_base_url": URL}) == mine
    edited = wired.replace(URL, "https://elsewhere/v1")
    assert unwire_text(edited, {"openai_base_url": None}, {"openai_base_url": URL}) == edited


def test_invalid_toml_is_left_alone() -> None:
    with pytest.raises(ConfigError):
        wire_text("model = = 1\n", {"openai_base_url": URL})


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def test_sync_then_unsync_restores_the_file_byte_for_byte(tmp_path: Path, settings: Settings) -> None:
    config = tmp_path / "codex" / "config.toml"
    config.parent.mkdir()
    config.write_bytes(USER_CONFIG.encode())
    config.chmod(0o640)
    assert "openai_base_url" in sync_codex(settings, 9911, config=config)
    assert tomllib.loads(config.read_text())["openai_base_url"] == "http://127.0.0.1:9911/v1"
    assert "already" in sync_codex(settings, 9911, config=config)
    sync_codex(settings, 9912, config=config)  # a new port later: the original kept is still the first
    assert unsync_codex(settings) is not None
    assert config.read_bytes() == USER_CONFIG.encode()
    assert config.stat().st_mode & 0o777 == 0o640
    assert unsync_codex(settings) is None  # nothing left to undo


def test_unsync_after_user_edits_keeps_their_edits(tmp_path: Path, settings: Settings) -> None:
    config = tmp_path / "config.toml"
    config.write_text(USER_CONFIG)
    sync_codex(settings, 9911, config=config)
    config.write_text(config.read_text() + '\n[profiles.fast]\nmodel = "gpt-5-mini"\n')
    unsync_codex(settings)
    parsed = tomllib.loads(config.read_text())
    assert "openai_base_url" not in parsed and parsed["profiles"]["fast"]["model"] == "gpt-5-mini"


def test_sync_creates_and_unsync_removes_a_missing_file(tmp_path: Path, settings: Settings) -> None:
    config = tmp_path / "new" / "config.toml"
    sync_codex(settings, 9911, config=config)
    assert tomllib.loads(config.read_text()) == {"openai_base_url": "http://127.0.0.1:9911/v1"}
    unsync_codex(settings)
    assert not config.exists()


def test_chatgpt_login_also_gets_chatgpt_base_url(tmp_path: Path, settings: Settings) -> None:
    config = tmp_path / "config.toml"
    (tmp_path / "auth.json").write_text(json.dumps({"tokens": {"access_token": "x"}, "OPENAI_API_KEY": None}))
    sync_codex(settings, 9911, config=config)
    assert tomllib.loads(config.read_text())["chatgpt_base_url"] == "http://127.0.0.1:9911/backend-api/"


def test_sync_refuses_a_broken_config_and_changes_nothing(tmp_path: Path, settings: Settings) -> None:
    config = tmp_path / "config.toml"
    config.write_text("model = = 1\n")
    with pytest.raises(WiringError):
        sync_codex(settings, 9911, config=config)
    assert config.read_text() == "model = = 1\n"


def test_config_path_follows_codex_home() -> None:
    assert codex_config_path({"CODEX_HOME": "/x/c", "HOME": "/h"}) == Path("/x/c/config.toml")
    assert codex_config_path({"HOME": "/h"}) == Path("/h/.codex/config.toml")


def test_cli_uninstall_restores_codex_first(isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    codex_home = isolated_home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_bytes(USER_CONFIG.encode())
    monkeypatch.setenv("CODEX_HOME", str(codex_home))
    monkeypatch.setenv("CIPX_HOME", str(isolated_home / ".opik-cipx"))
    assert main(["setup", "--codex", "--dry-run"]) == 0
    assert "openai_base_url" in capsys.readouterr().out
    sync_codex(Settings(), 9911)
    assert main(["uninstall"]) == 0
    assert (codex_home / "config.toml").read_bytes() == USER_CONFIG.encode()
    assert "restored" in capsys.readouterr().out

"""Settings sources, each one and their precedence: args > env > OPIK_CC_* > config.toml > ~/.opik.config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from opik_cipx.config import OPIK_CLOUD_URL, Settings, read_opik_config

INI = """\
[opik]
url_override = http://127.0.0.1:5173/api/
api_key = INI_KEY
workspace = ini-ws
project_name = ini-project

[opik_cc]
project_name = cc-section-project
"""


@pytest.fixture
def home(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("OPIK_CIPX_BASE_URL", "OPIK_CIPX_API_KEY", "OPIK_CIPX_WORKSPACE", "OPIK_CIPX_PROJECT",
                "OPIK_CC_WORKSPACE", "OPIK_CC_PROJECT", "CIPX_CONFIG", "OPIK_CONFIG_PATH",
                "CIPX_CAPTURE_CONTENT", "CIPX_SAMPLE_RATE", "CIPX_SENTRY", "CIPX_SENTRY_DSN", "OPIK_CIPX_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return isolated_home


def write_toml(home: Path, text: str) -> Path:
    path = home / ".opik-cipx" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_mean_no_destination(home: Path) -> None:
    s = Settings()
    assert s.opik_url is None and s.opik_project == "claude-code"
    assert s.capture_content is True and s.sample_rate == 1.0 and not s.telemetry_enabled
    assert s.home == home / ".opik-cipx"  # CIPX_HOME from the fixture


def test_home_env_var_is_not_mistaken_for_the_state_dir(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIPX_HOME")
    monkeypatch.setenv("HOST", "0.0.0.0")  # also a bare field name: must be ignored, not refused
    s = Settings()
    assert s.home == home / ".opik-cipx" and s.host == "127.0.0.1"


def test_opik_config_ini_later_values_win(home: Path) -> None:
    (home / ".opik.config").write_text(INI)
    s = Settings()
    assert s.opik_base_url == "http://127.0.0.1:5173/api"
    assert s.opik_api_key == "INI_KEY" and s.opik_workspace == "ini-ws"
    assert s.opik_project == "cc-section-project"
    assert read_opik_config(home / "missing") == {}


def test_opik_config_path_env_points_elsewhere(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = home / "elsewhere.ini"
    other.write_text("[opik]\nworkspace = elsewhere\n")
    monkeypatch.setenv("OPIK_CONFIG_PATH", str(other))
    assert Settings().opik_workspace == "elsewhere"


def test_config_toml_beats_the_ini_file(home: Path) -> None:
    (home / ".opik.config").write_text(INI)
    write_toml(home, 'OPIK_CIPX_PROJECT = "toml-project"\n[opik]\nworkspace = "toml-ws"\n\ncapture_content = false\n')
    s = Settings()
    assert s.opik_project == "toml-project" and s.opik_workspace == "toml-ws"
    assert s.opik_api_key == "INI_KEY"  # not in the toml: the ini still fills it


def test_cipx_config_env_names_the_toml_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = home / "custom.toml"
    path.write_text("sample_rate = 0.5\ncapture_content = false\n")
    monkeypatch.setenv("CIPX_CONFIG", str(path))
    s = Settings()
    assert s.sample_rate == 0.5 and s.capture_content is False and s.config_file == path


def test_opik_cc_env_beats_both_files(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / ".opik.config").write_text(INI)
    write_toml(home, 'opik_project = "toml-project"\nopik_workspace = "toml-ws"\n')
    monkeypatch.setenv("OPIK_CC_PROJECT", "cc-env-project")
    monkeypatch.setenv("OPIK_CC_WORKSPACE", "cc-env-ws")
    s = Settings()
    assert (s.opik_project, s.opik_workspace) == ("cc-env-project", "cc-env-ws")


def test_opik_cipx_env_beats_opik_cc_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPIK_CC_PROJECT", "cc-env-project")
    monkeypatch.setenv("OPIK_CIPX_PROJECT", "cipx-{username}")
    monkeypatch.setenv("OPIK_CC_WORKSPACE", "cc-ws")
    monkeypatch.setenv("OPIK_CIPX_WORKSPACE", "cipx-ws")
    monkeypatch.setenv("OPIK_CIPX_BASE_URL", "http://127.0.0.1:9/api/")
    monkeypatch.setenv("OPIK_CIPX_API_KEY", "ENV_KEY")
    monkeypatch.setenv("OPIK_CIPX_DEBUG", "1")
    s = Settings()
    assert s.opik_project == "cipx-{username}" and s.opik_workspace == "cipx-ws"
    assert s.opik_base_url == "http://127.0.0.1:9/api" and s.opik_api_key == "ENV_KEY" and s.opik_debug
    assert "ENV_KEY" not in repr(s)


def test_arguments_beat_everything(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPIK_CIPX_PROJECT", "env-project")
    assert Settings(opik_project="arg-project").opik_project == "arg-project"


def test_privacy_and_telemetry_from_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIPX_CAPTURE_CONTENT", "false")
    monkeypatch.setenv("CIPX_SAMPLE_RATE", "0.1")
    monkeypatch.setenv("CIPX_SENTRY_DSN", "http://k@127.0.0.1:1/2")
    s = Settings()
    assert s.capture_content is False and s.sample_rate == 0.1 and s.telemetry_enabled
    monkeypatch.setenv("CIPX_SENTRY", "off")
    assert not Settings().telemetry_enabled


def test_api_key_alone_means_opik_cloud(home: Path) -> None:
    assert Settings(opik_api_key="k").opik_url == OPIK_CLOUD_URL


@pytest.mark.parametrize("bad", [{"sample_rate": 1.5}, {"sample_rate": -0.1}, {"opik_base_url": "ftp://x"}])
def test_invalid_values_are_refused(home: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_broken_toml_names_the_file(home: Path) -> None:
    path = write_toml(home, "sample_rate = [\n")
    with pytest.raises(ValueError, match=str(path)):
        Settings()

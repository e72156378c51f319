"""load_settings(): a bad value is set aside with a plain message naming what the user set."""

from __future__ import annotations

from pathlib import Path

import pytest

from opik_cipx.config_load import ConfigError, load_settings


def _opik_config(home: Path, text: str) -> None:
    (home / ".opik.config").write_text(text)


def _toml(home: Path, text: str) -> Path:
    path = home / ".opik-cipx" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_clean_configuration_has_no_problems(isolated_home: Path) -> None:
    assert load_settings(strict=True).config_problems == []


def test_a_bad_url_override_in_the_opik_sdk_file_means_local_only(isolated_home: Path) -> None:
    _opik_config(isolated_home, "[opik]\nurl_override = ftp://opik.internal\napi_key = sk-secret\nworkspace = team\n")
    s = load_settings(strict=True)  # even strict: an Opik setting never stops the gateway
    assert s.opik_url is None, "nothing may be shipped (not even to Opik Cloud with the key)"
    [problem] = s.config_problems
    assert problem.shipping
    text = str(problem)
    assert text.startswith("~/.opik.config: url_override: must start with http:// or https://")
    assert "'ftp://opik.internal'" in text and "kept locally" in text
    assert "sk-secret" not in text
    for jargon in ("Value error", "Input should", "opik_base_url", "OPIK_CIPX_BASE_URL"):
        assert jargon not in text


def test_env_values_are_named_by_their_variable_in_plain_words(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIPX_SAMPLE_RATE", "2")
    monkeypatch.setenv("CIPX_CAPTURE_CONTENT", "flase")
    s = load_settings()
    by_origin = {p.origin: p.message for p in s.config_problems}
    assert by_origin["CIPX_SAMPLE_RATE"].startswith("must be at most 1 (it is '2')")
    assert by_origin["CIPX_CAPTURE_CONTENT"].startswith("must be true or false")
    assert s.sample_rate == 1.0 and s.opik_url is None and not s.telemetry_enabled


def test_core_settings_refuse_strict_commands_and_fall_back_for_the_others(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIPX_PORT", "abc")
    monkeypatch.setenv("CIPX_UPSTREAM_URL", "api.anthropic.com")
    with pytest.raises(ConfigError) as err:
        load_settings(strict=True)
    messages = sorted(map(str, err.value.problems))
    assert messages == ["CIPX_PORT: must be a whole number (it is 'abc')",
                        "CIPX_UPSTREAM_URL: must start with http:// or https:// (it is 'api.anthropic.com')"]
    lenient = load_settings()  # stop, logs, purge, uninstall: the state dir is all they need
    assert lenient.port == 9909 and lenient.home == isolated_home / ".opik-cipx"
    assert len(lenient.config_problems) == 2 and not any(p.shipping for p in lenient.config_problems)


def test_config_toml_keys_are_named_as_written_and_the_path_appears_once(isolated_home: Path) -> None:
    _toml(isolated_home, 'sample_rate = 3\n[opik]\nbase_url = "zz"\n')
    problems = {str(p) for p in load_settings().config_problems}
    assert any(p.startswith("~/.opik-cipx/config.toml: [opik] base_url: must start with") for p in problems)
    assert any(p.startswith("~/.opik-cipx/config.toml: sample_rate: must be at most 1") for p in problems)
    assert all(p.count("config.toml") == 1 for p in problems)


def test_a_config_toml_that_does_not_parse_is_ignored_and_nothing_ships(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPIK_CIPX_API_KEY", "k")  # would ship to Opik Cloud
    _toml(isolated_home, "capture_content = false\nsample_rate = [\n")
    s = load_settings(strict=True)
    [problem] = s.config_problems
    assert s.opik_url is None and problem.shipping
    assert str(problem).startswith("~/.opik-cipx/config.toml: is not valid TOML (")
    assert str(problem).count("config.toml") == 1


def test_secrets_are_never_echoed(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPIK_CIPX_BASE_URL", "sk-looks-like-a-key")
    monkeypatch.setenv("OPIK_CIPX_API_KEY", "sk-real-key")
    [problem] = load_settings().config_problems
    assert "sk-real-key" not in str(problem) and problem.origin == "OPIK_CIPX_BASE_URL"


def test_retention_settings_default_to_90_days_and_no_cap(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(strict=True)
    assert (s.retention_days, s.spool_max_mb) == (90, 0)
    monkeypatch.setenv("CIPX_RETENTION_DAYS", "30")
    monkeypatch.setenv("CIPX_SPOOL_MAX_MB", "500")
    s = load_settings(strict=True)
    assert (s.retention_days, s.spool_max_mb) == (30, 500)


@pytest.mark.parametrize(("var", "value", "words"), [
    ("CIPX_RETENTION_DAYS", "365d", "must be a whole number (it is '365d')"),
    ("CIPX_RETENTION_DAYS", "-1", "must be at least 0 (it is '-1')"),
    ("CIPX_SPOOL_MAX_MB", "2GB", "must be a whole number (it is '2GB')"),
])
def test_a_bad_retention_value_turns_pruning_off_and_never_stops_the_gateway(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, words: str
) -> None:
    monkeypatch.setenv("CIPX_RETENTION_DAYS", "30")
    monkeypatch.setenv("CIPX_SPOOL_MAX_MB", "500")
    monkeypatch.setenv(var, value)
    s = load_settings(strict=True)  # the gateway starts; it only deletes nothing
    assert (s.retention_days, s.spool_max_mb) == (0, 0), "a typo must never fall back to deleting at 90 days"
    [problem] = s.config_problems
    assert str(problem) == f"{var}: {words}; pruning is off until it is fixed (nothing is deleted)"
    assert not problem.shipping and s.config_problems == [problem]


def test_both_bad_retention_values_are_each_reported(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _toml(isolated_home, "retention_days = 'forever'\nspool_max_mb = -5\n")
    s = load_settings(strict=True)
    assert sorted(p.origin for p in s.config_problems) == [
        "~/.opik-cipx/config.toml: retention_days", "~/.opik-cipx/config.toml: spool_max_mb"]
    assert (s.retention_days, s.spool_max_mb) == (0, 0)

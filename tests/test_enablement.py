from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from opik_cipx.ship.enablement import Enablement, parse_marker


@dataclass
class FakeSession:
    session_id: str
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)


class FakeSessions:
    def __init__(self, *sessions: FakeSession) -> None:
        self._by_id = {s.session_id: s for s in sessions}

    def get(self, session_id: str) -> FakeSession | None:
        return self._by_id.get(session_id)


def marker(root: Path, text: str) -> Path:
    path = root / ".claude" / ".opik-tracing-enabled"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", (True, False)), ("on\n", (True, False)), ("off", (False, False)), (" Disabled\n", (False, False)),
     ("debug", (True, True)), ("anything", (True, False))],
)
def test_marker_contents(text: str, expected: tuple[bool, bool]) -> None:
    assert parse_marker(text) == expected


def test_off_by_default(tmp_path: Path) -> None:
    d = Enablement(tmp_path / "home", env={}).decide(str(tmp_path / "proj"))
    assert (d.enabled, d.source) == (False, "default")


def test_project_marker_wins_over_env_and_home_marker(tmp_path: Path) -> None:
    home, proj = tmp_path / "home", tmp_path / "proj"
    marker(home, "on")
    marker(proj, "off")
    d = Enablement(home, env={"OPIK_CC_TRACING_ENABLED": "true"}).decide(str(proj))
    assert not d.enabled and d.source.startswith("project-marker:")


def test_env_wins_over_home_marker_and_session_env_over_process_env(tmp_path: Path) -> None:
    home = tmp_path / "home"
    marker(home, "off")
    en = Enablement(home, env={"OPIK_CC_TRACING_ENABLED": "1"})
    assert en.decide().enabled and en.decide().source == "env"
    assert not en.decide(None, {"OPIK_CC_TRACING_ENABLED": "false"}).enabled


def test_home_marker_applies_when_nothing_else_matches(tmp_path: Path) -> None:
    home = tmp_path / "home"
    marker(home, "debug")
    d = Enablement(home, env={}).decide(str(tmp_path / "proj"))
    assert d.enabled and d.debug and d.source.startswith("home-marker:")


def test_marker_changes_take_effect_without_restart(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    en = Enablement(tmp_path / "home", env={}, ttl=0.2)
    assert not en.decide(str(proj)).enabled
    path = marker(proj, "")
    time.sleep(0.25)
    assert en.decide(str(proj)).enabled
    path.write_text("off")
    time.sleep(0.25)
    assert not en.decide(str(proj)).enabled
    path.unlink()
    time.sleep(0.25)
    assert en.decide(str(proj)).source == "default"


def test_session_lookup_supplies_cwd_and_env_and_its_absence_is_tolerated(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    marker(proj, "on")
    en = Enablement(tmp_path / "home", env={})
    sessions = FakeSessions(FakeSession("s1", cwd=str(proj)), FakeSession("s2", env={"OPIK_CC_TRACING_ENABLED": "true"}))
    assert en.for_session(sessions, "s1").enabled
    assert en.for_session(sessions, "s2").source == "env"
    assert not en.for_session(sessions, "unknown").enabled
    assert not en.for_session(None, "s1").enabled  # no hook registry at all: what the request carries


def test_a_debug_marker_turns_on_the_debug_log_without_opik_cipx_debug(make_settings: object) -> None:
    import logging

    from opik_cipx.ship.stage import SpanStage

    settings = make_settings()  # type: ignore[operator]
    assert not settings.opik_debug
    stage = SpanStage(settings)
    stage.debug("hidden %s", "line")  # no marker, no OPIK_CIPX_DEBUG: nothing is written
    stage.debug("exchange %s: shipped", "abc", force=True)  # what a `debug` marker does
    for handler in logging.getLogger("opik_cipx.shipper.debug").handlers:
        handler.flush()
    text = (settings.logs_dir / "spawn.log").read_text()
    assert "exchange abc: shipped" in text and "hidden" not in text

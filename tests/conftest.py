"""Shared fixtures: every test gets its own HOME and CIPX_HOME under tmp_path."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The shared helpers in tests/support assert like test code does: rewrite their asserts too
# (before anything imports them) so a failing check shows its values.
pytest.register_assert_rewrite("tests.support")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gateway"))

from opik_cipx.config import Settings  # noqa: E402
from tests.support.release import ReleaseMirror, serve_release_mirror  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test may read or write the real home directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CIPX_HOME", str(home / ".opik-cipx"))
    for var in ("CIPX_PORT", "CIPX_UPSTREAM_URL", "CIPX_UPSTREAM_PROXY", "CIPX_PRICING_PATH",
                "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "HTTP_PROXY", "HTTPS_PROXY",
                "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def gateway_env(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment for a daemonized gateway started by a test; stopped (by its pidfile) after."""
    from opik_cipx.config_load import load_settings
    from opik_cipx.ops import daemon

    monkeypatch.setenv("CIPX_PORT", "0")
    monkeypatch.setenv("CIPX_UPSTREAM_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "gateway"), str(ROOT)]))
    yield dict(os.environ)
    try:
        daemon.stop(load_settings(), timeout=10)  # whatever configuration the test left
    except daemon.DaemonError:
        pass


@pytest.fixture
def make_settings(isolated_home: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"home": isolated_home / ".opik-cipx", "port": 0}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def upstream() -> AsyncIterator[Any]:
    from tests.support.fake_anthropic import FakeAnthropic

    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def gateway(upstream: Any, make_settings: Callable[..., Settings]) -> AsyncIterator[Any]:
    from opik_cipx.server import Gateway

    gw = Gateway(make_settings(upstream_url=upstream.url, shutdown_grace=2.0))
    async with gw:
        yield gw


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[ReleaseMirror]:
    """A release mirror and releases API on 127.0.0.1 serving <tmp_path>/mirror (tests/support/release.py)."""
    with serve_release_mirror(tmp_path / "mirror") as served:
        yield served

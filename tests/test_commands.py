"""Custom slash commands known from the session's project: attributed as such from the first call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opik_cipx.capture.commands import CommandIndex, command_names
from opik_cipx.server import Gateway
from opik_cipx.store import attribution as attribution_store
from opik_cipx.store.sessions import SessionInfo
from tests.support.fake_anthropic import FakeAnthropic

RECORDING = Path(__file__).parent / "fixtures" / "claude_code" / "opus48" / "00-prompt.json"
MARKER = "MARKER_CMD_DESC_7f3a"


def test_names_come_from_home_and_project_with_namespaced_subdirectories(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    (home / ".claude" / "commands").mkdir(parents=True)
    (home / ".claude" / "commands" / "mine.md").write_text("x")
    (project / ".claude" / "commands" / "front").mkdir(parents=True)
    (project / ".claude" / "commands" / "deploy.md").write_text("x")
    (project / ".claude" / "commands" / "front" / "lint.md").write_text("x")
    (project / ".claude" / "commands" / "notes.txt").write_text("x")
    assert command_names(str(project), home) == ("deploy", "front:lint", "lint", "mine")
    assert command_names(None, home) == ("mine",)
    assert command_names(str(tmp_path / "missing"), tmp_path / "nohome") == ()


def test_index_caches_per_cwd_and_sees_new_files_after_its_ttl(tmp_path: Path) -> None:
    cmds = tmp_path / "p" / ".claude" / "commands"
    cmds.mkdir(parents=True)
    index = CommandIndex(tmp_path / "home", ttl=0.0)
    assert index.names(str(tmp_path / "p")) == ()
    (cmds / "new.md").write_text("x")
    assert index.names(str(tmp_path / "p")) == ("new",)


@pytest.mark.parametrize("worker", [True, False], ids=["capture-worker", "in-thread"])
async def test_a_registered_sessions_commands_are_slash_commands_from_the_first_call(
    upstream: FakeAnthropic, make_settings: Any, tmp_path: Path, worker: bool
) -> None:
    meta = json.loads(RECORDING.with_name("00-prompt.meta.json").read_text())
    headers = {k: v for k, v in meta["headers"] if k.lower() not in ("content-length", "host")}
    session = headers["X-Claude-Code-Session-Id"]
    project = tmp_path / "project"
    (project / ".claude" / "commands").mkdir(parents=True)
    (project / ".claude" / "commands" / "acme-cmd.md").write_text("Summarise stock.\n")
    body = RECORDING.read_bytes()
    offset = body.find(MARKER.encode())
    assert offset > 0 and b"<command-name>/acme-cmd" not in body  # listed, not yet used

    async with Gateway(make_settings(upstream_url=upstream.url, capture_worker=worker)) as gw:
        assert gw.spool is not None and gw.capture is not None
        await gw.sessions.register(SessionInfo(session, cwd=str(project)))
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/messages?beta=true", data=body, headers={**headers, "x-api-key": "k"}) as r:
                await r.read()
        assert await gw.capture.drain(10)
        (row,) = await gw.spool.calls(limit=5)
        ex = await gw.spool.get(row.id)
        assert ex is not None

        def check(sp: Any) -> tuple[tuple[str, ...], str]:
            commands = attribution_store.stored_commands(sp.conn, ex.id)
            attr = attribution_store.reanalyze(sp.conn, ex, gw.prices)
            region = next(r for r in attr.segments() if r.start <= offset < r.end)
            return commands, region.category

        commands, category = await gw.spool.run(check)
    assert "acme-cmd" in commands
    assert category == "slash_commands"

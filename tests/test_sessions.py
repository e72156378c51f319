"""Sessions registered by the SessionStart hook: validated, persisted in the spool, kept in memory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from opik_cipx.store.migrations import applied
from opik_cipx.store.sessions import (
    InvalidSession,
    SessionInfo,
    SessionStore,
    SessionTable,
)
from opik_cipx.store.spool import AsyncSpool, Spool, connect


def migrated(path: Path) -> sqlite3.Connection:
    return Spool(connect(path)).conn


def info(sid: str, **kw: object) -> SessionInfo:
    base = {"session_id": sid, "cwd": "/p", "transcript_path": "/t.jsonl", "source": "startup", "env": {"OPIK_CC_PROJECT": "x"}}
    base.update(kw)
    return SessionInfo.from_json(base)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"cwd": "/p"},
        {"session_id": ""},
        {"session_id": "s", "cwd": 3},
        {"session_id": "s", "env": {"A": 1}},
        {"session_id": "s", "env": ["A"]},
        {"session_id": "s", "env": {f"K{i}": "v" for i in range(500)}},
    ],
)
def test_registration_payloads_that_are_not_sessions_are_rejected(payload: object) -> None:
    with pytest.raises(InvalidSession):
        SessionInfo.from_json(payload)


def test_from_json_keeps_the_fields_the_shipper_reads_and_stamps_times() -> None:
    s = info("abc", git_repo="git@x:y.git", git_branch="main")
    assert (s.session_id, s.cwd, s.transcript_path, s.source, s.git_repo, s.git_branch) == ("abc", "/p", "/t.jsonl", "startup", "git@x:y.git", "main")
    assert s.env == {"OPIK_CC_PROJECT": "x"} and s.registered_at > 0 and s.last_seen == s.registered_at


def test_migration_creates_the_sessions_table(tmp_path: Path) -> None:
    conn = migrated(tmp_path / "s.sqlite3")
    assert "m004_sessions" in applied(conn)
    assert SessionTable(conn).count() == 0


def test_reregistering_a_session_keeps_its_first_registration_time(tmp_path: Path) -> None:
    table = SessionTable(migrated(tmp_path / "s.sqlite3"))
    first = info("s1", registered_at=0)
    first.registered_at, first.last_seen = 100.0, 100.0
    table.upsert(first)
    again = info("s1", source="resume", cwd="/q")
    again.registered_at, again.last_seen = 200.0, 200.0
    table.upsert(again)
    got = table.get("s1")
    assert got is not None and (got.registered_at, got.last_seen, got.source, got.cwd) == (100.0, 200.0, "resume", "/q")
    assert table.count() == 1


def test_recent_lists_newest_first(tmp_path: Path) -> None:
    table = SessionTable(migrated(tmp_path / "s.sqlite3"))
    for n, sid in enumerate(["a", "b", "c"]):
        s = info(sid)
        s.last_seen = float(n)
        table.upsert(s)
    assert [s.session_id for s in table.recent(2)] == ["c", "b"]


async def test_a_restarted_gateway_still_knows_the_sessions_it_was_told_about(tmp_path: Path) -> None:
    spool = await AsyncSpool.open(tmp_path / "s.sqlite3")
    store = SessionStore(spool)
    await store.register(info("s1"))
    assert store.get("s1") is not None and store.get("nope") is None
    await spool.close()

    spool = await AsyncSpool.open(tmp_path / "s.sqlite3")
    try:
        restarted = SessionStore(spool)
        assert restarted.get("s1") is None
        assert await restarted.load() == 1
        got = restarted.get("s1")
        assert got is not None and got.env == {"OPIK_CC_PROJECT": "x"} and got.cwd == "/p"
    finally:
        await spool.close()


async def test_memory_is_bounded_and_keeps_the_most_recently_used() -> None:
    store = SessionStore(capacity=2)
    await store.register(info("a"))
    await store.register(info("b"))
    assert store.get("a") is not None  # touching "a" makes "b" the oldest
    await store.register(info("c"))
    assert [s.session_id for s in store.recent()] == ["c", "a"]
    assert len(store) == 2 and store.get("b") is None

"""What the SessionStart hook tells the gateway about each Claude Code session.

Requests carry only a session id; the cwd (for enablement markers), the
environment (``OPIK_CC_*``, ``OPIK_CIPX_*``, parent trace ids) and the git
repo and branch come from the hook. :class:`SessionTable` keeps them in the
spool database (so a gateway restarted mid-session still knows them);
:class:`SessionStore` is the gateway's in-memory view with write-through,
whose synchronous :meth:`SessionStore.get` is cheap enough for any stage.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .migrations import transaction
from .spool import AsyncSpool

MAX_ENV_ITEMS = 200
MAX_FIELD_CHARS = 4096


class InvalidSession(ValueError):
    """A registration payload that is not a session."""


@dataclass
class SessionInfo:
    session_id: str
    cwd: str | None = None
    transcript_path: str | None = None
    source: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    git_repo: str | None = None
    git_branch: str | None = None
    registered_at: float = 0.0
    last_seen: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> SessionInfo:
        """Validate untrusted JSON (the admin endpoint's body) into a SessionInfo."""
        if not isinstance(data, Mapping):
            raise InvalidSession("a session must be a JSON object")
        sid = data.get("session_id")
        if not isinstance(sid, str) or not sid or len(sid) > 200:
            raise InvalidSession("session_id must be a non-empty string")
        text: dict[str, str | None] = {}
        for name in ("cwd", "transcript_path", "source", "git_repo", "git_branch"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidSession(f"{name} must be a string or null")
            text[name] = value[:MAX_FIELD_CHARS] if isinstance(value, str) else None
        env = data.get("env") or {}
        if not isinstance(env, Mapping) or len(env) > MAX_ENV_ITEMS:
            raise InvalidSession(f"env must be an object of at most {MAX_ENV_ITEMS} strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidSession("env keys and values must be strings")
        now = time.time()
        return cls(
            session_id=sid,
            env={k: v[:MAX_FIELD_CHARS] for k, v in env.items()},
            registered_at=now,
            last_seen=now,
            **text,
        )


_COLUMNS = "session_id, cwd, transcript_path, source, env, git_repo, git_branch, registered_at, last_seen"


def _row(info: SessionInfo) -> tuple[Any, ...]:
    return (
        info.session_id,
        info.cwd,
        info.transcript_path,
        info.source,
        json.dumps(info.env, sort_keys=True),
        info.git_repo,
        info.git_branch,
        info.registered_at,
        info.last_seen,
    )


def _info(row: tuple[Any, ...]) -> SessionInfo:
    try:
        env = json.loads(row[4] or "{}")
    except ValueError:
        env = {}
    return SessionInfo(
        session_id=row[0],
        cwd=row[1],
        transcript_path=row[2],
        source=row[3],
        env=env if isinstance(env, dict) else {},
        git_repo=row[5],
        git_branch=row[6],
        registered_at=row[7],
        last_seen=row[8],
    )


class SessionTable:
    """The ``sessions`` table (migration ``m004_sessions``); handed its connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def upsert(self, info: SessionInfo) -> SessionInfo:
        """Insert or refresh; the first registration time is kept across resumes and restarts."""
        with transaction(self.conn):
            old = self.conn.execute(
                "SELECT registered_at FROM sessions WHERE session_id = ?", (info.session_id,)
            ).fetchone()
            if old is not None:
                info.registered_at = min(info.registered_at or old[0], old[0])
            self.conn.execute(f"INSERT OR REPLACE INTO sessions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", _row(info))
        return info

    def get(self, session_id: str) -> SessionInfo | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return _info(row) if row else None

    def recent(self, limit: int) -> list[SessionInfo]:
        """Newest first by last registration."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM sessions ORDER BY last_seen DESC LIMIT ?", (max(0, limit),)
        ).fetchall()
        return [_info(r) for r in rows]

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM sessions").fetchone()[0])


class SessionStore:
    """The gateway's sessions: a bounded in-memory map, written through to the spool.

    ``get`` never touches SQLite, so capture stages and the shipper can call it on
    the event loop. Without a spool (unit tests, a spool that failed to open) it
    is memory only.
    """

    def __init__(self, spool: AsyncSpool | None = None, *, capacity: int = 10_000) -> None:
        self._spool = spool
        self._capacity = capacity
        self._items: OrderedDict[str, SessionInfo] = OrderedDict()
        self.registrations = 0

    async def load(self) -> int:
        """Bring the most recent sessions back into memory after a (re)start."""
        if self._spool is None:
            return 0
        rows = await self._spool.run(lambda s: SessionTable(s.conn).recent(self._capacity))
        for info in reversed(rows):
            self._remember(info)
        return len(rows)

    def get(self, session_id: str) -> SessionInfo | None:
        info = self._items.get(session_id)
        if info is not None:
            self._items.move_to_end(session_id)
        return info

    async def register(self, info: SessionInfo) -> SessionInfo:
        if self._spool is not None:
            info = await self._spool.run(lambda s: SessionTable(s.conn).upsert(info))
        else:
            old = self._items.get(info.session_id)
            if old is not None:
                info.registered_at = min(info.registered_at, old.registered_at)
        self._remember(info)
        self.registrations += 1
        return info

    def _remember(self, info: SessionInfo) -> None:
        self._items[info.session_id] = info
        self._items.move_to_end(info.session_id)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def recent(self, n: int = 10) -> list[SessionInfo]:
        return list(reversed(list(self._items.values())[-n:]))

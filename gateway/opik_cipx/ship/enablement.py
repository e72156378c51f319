"""Is shipping on for this session? Markers and environment, first match wins, re-read live.

Off by default. In order:

1. ``<cwd>/.claude/.opik-tracing-enabled`` in the session's project;
2. ``OPIK_CC_TRACING_ENABLED`` (the session's environment from the SessionStart
   hook, else the gateway's own);
3. ``~/.claude/.opik-tracing-enabled``;
4. off.

A marker's content decides: ``off``/``disabled`` -> off, ``debug`` -> on with
debug, anything else (empty included) -> on. Marker files are stat'ed at most
every ``ttl`` seconds, so creating, editing or deleting one takes effect within
seconds without a restart. A disabled session is still proxied and stored;
it is only not shipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MARKER = Path(".claude") / ".opik-tracing-enabled"
ENV_VAR = "OPIK_CC_TRACING_ENABLED"
_ON = frozenset({"true", "1", "yes", "on"})
_OFF = frozenset({"false", "0", "no", "off"})


class SessionInfoLike(Protocol):
    """What the SessionStart hook registered for a session (see the sessions module)."""

    # Read-only members: a mutable protocol attribute is invariant, and sessions.SessionInfo
    # holds a dict where only a Mapping is read.
    @property
    def session_id(self) -> str: ...
    @property
    def cwd(self) -> str | None: ...
    @property
    def env(self) -> Mapping[str, str]: ...


class SessionLookup(Protocol):
    """Sessions by id: the gateway's in-memory store, or the spool's table in the capture worker."""

    def get(self, session_id: str) -> SessionInfoLike | None: ...


@dataclass(frozen=True, slots=True)
class Decision:
    enabled: bool
    debug: bool
    source: str  # project-marker:<path> | env | home-marker:<path> | default


def parse_marker(text: str) -> tuple[bool, bool]:
    """(enabled, debug) for a marker file's content."""
    word = text.strip().lower()
    if word in ("off", "disabled"):
        return False, False
    if word == "debug":
        return True, True
    return True, False


class Enablement:
    def __init__(self, home: Path, *, env: Mapping[str, str] | None = None, ttl: float = 2.0) -> None:
        self.home = home
        self._env = env if env is not None else os.environ
        self._ttl = ttl
        # path -> (checked_at, content or None when absent)
        self._cache: dict[Path, tuple[float, str | None]] = {}

    def _read(self, path: Path) -> str | None:
        now = time.monotonic()
        hit = self._cache.get(path)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            content: str | None = path.read_text(encoding="utf-8", errors="replace")[:256]
        except (FileNotFoundError, NotADirectoryError):
            content = None
        except OSError:
            content = "" if path.exists() else None  # unreadable but present: a marker is a marker
        if len(self._cache) > 4096:  # one entry per project dir; never grow without bound
            self._cache.clear()
        self._cache[path] = (now, content)
        return content

    def decide(self, cwd: str | None = None, session_env: Mapping[str, str] | None = None) -> Decision:
        if cwd:
            marker = Path(cwd) / MARKER
            content = self._read(marker)
            if content is not None:
                enabled, debug = parse_marker(content)
                return Decision(enabled, debug, f"project-marker:{marker}")
        for env in (session_env, self._env):
            if env is None:
                continue
            value = env.get(ENV_VAR)
            if value is None:
                continue
            word = value.strip().lower()
            if word in _ON:
                return Decision(True, False, "env")
            if word in _OFF:
                return Decision(False, False, "env")
        home_marker = self.home / MARKER
        content = self._read(home_marker)
        if content is not None:
            enabled, debug = parse_marker(content)
            return Decision(enabled, debug, f"home-marker:{home_marker}")
        return Decision(False, False, "default")

    def for_session(self, sessions: SessionLookup | None, session_id: str | None) -> Decision:
        """Decide with what the SessionStart hook told us, or with nothing when it never came."""
        info = sessions.get(session_id) if sessions is not None and session_id else None
        if info is None:
            return self.decide()
        return self.decide(getattr(info, "cwd", None), getattr(info, "env", None) or {})

"""Names of the custom slash commands a session can use, from ``.claude/commands``.

In the request body a custom command's line in the skills listing reads exactly
like a skill's; only its name tells them apart. The SessionStart hook registers
the session's cwd, so the capture can list the project's and the user's command
files and let attribution put those lines under slash commands from the first
call, not only once a command has been used.
"""

from __future__ import annotations

import time
from pathlib import Path

_TTL = 10.0  # seconds: new command files are picked up without a restart


def command_names(cwd: str | None, home: Path) -> tuple[str, ...]:
    """``foo`` for ``commands/foo.md``; ``dir:foo`` too for ``commands/dir/foo.md``."""
    roots = [home / ".claude" / "commands"]
    if cwd:
        roots.append(Path(cwd) / ".claude" / "commands")
    names: set[str] = set()
    for root in roots:
        try:
            files = list(root.rglob("*.md"))
        except OSError:
            continue
        for path in files:
            rel = path.relative_to(root).with_suffix("")
            names.add(rel.name)
            if len(rel.parts) > 1:
                names.add(":".join(rel.parts))
    return tuple(sorted(names))


class CommandIndex:
    """``command_names`` with a short per-cwd cache: one directory walk per session, not per call."""

    def __init__(self, home: Path, ttl: float = _TTL) -> None:
        self._home = home
        self._ttl = ttl
        self._cache: dict[str | None, tuple[float, tuple[str, ...]]] = {}

    def names(self, cwd: str | None) -> tuple[str, ...]:
        now = time.monotonic()
        hit = self._cache.get(cwd)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        names = command_names(cwd, self._home)
        self._cache[cwd] = (now, names)
        return names

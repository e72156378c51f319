"""``opik-cipx statusline``: one status-line segment for Claude Code, in a few milliseconds.

Claude Code pipes its status-line JSON (``session_id``, ``model``, ``context_window``, ``cost``,
…) into the configured command after every assistant message. This reads the per-session summary
the capture worker keeps current (``capture/session_summary.py``) and prints, e.g.::

    ◆ $1.87 · ctx 42% · cache 91% · tools 48% mcp 6% · 5h 12% 7d 71% · compact

Only the standard library is imported here, and nothing of the gateway's: no pydantic, no
asyncio, no spool query. The user's own status-line command, saved by ``setup``/``sync`` when
they wrap it, runs first with the same input and its output is kept as is, ours on its own row.
With the gateway down the user's line still prints, and ours says ``offline``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ..segment import STATUS_SUFFIX, SUMMARY_DIR, render, summary_of

# typing and pathlib cost this command ~6 ms of its budget: neither is imported.

WRAPPED_FILE = "statusline-wrapped.json"  # the user's own statusLine, saved by setup/sync
USER_COMMAND_TIMEOUT = 2.0


def home() -> str:
    return os.environ.get("CIPX_HOME") or os.path.join(os.path.expanduser("~"), ".opik-cipx")


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def gateway_alive(state: str) -> bool:
    """The launcher's check, in Python: a port file, and the pidfile's process started when it says."""
    try:
        if not _read(os.path.join(state, "port")).strip():
            return False
        fields = _read(os.path.join(state, "gateway.pid")).split()
        pid = int(fields[0])
        ticks = fields[1] if len(fields) > 1 else "-"
    except (OSError, ValueError, IndexError):
        return False
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return ticks == "-"
    return stat.rsplit(") ", 1)[-1].split()[19] == ticks


def _user_line(state: str, raw: bytes) -> str | None:
    """The user's own status line, run as Claude Code would run it; None when there is none."""
    try:
        saved = json.loads(_read(os.path.join(state, WRAPPED_FILE)))
        command = saved["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(command, str) or not command.strip():
        return None
    import subprocess  # ~7 ms: only when there is a command of the user's to run

    try:
        done = subprocess.run(command, shell=True, input=raw, capture_output=True,
                              timeout=USER_COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace").rstrip("\n")


def main(stdin: bytes | None = None) -> int:
    """Always 0 and always quick: a broken status line must not trouble the session."""
    raw = sys.stdin.buffer.read(1024 * 1024) if stdin is None else stdin
    state = home()
    try:
        claude = json.loads(raw or b"{}")
    except ValueError:
        claude = {}
    if not isinstance(claude, dict):
        claude = {}
    lines = []
    if os.environ.get("OPIK_CIPX_STATUSLINE", "").lower() != "off":
        user = _user_line(state, raw)
        if user:
            lines.append(user)
    if os.environ.get("OPIK_CIPX_STATUSLINE_DISPLAY", "1") != "0":
        sid = claude.get("session_id")
        summary = None
        if isinstance(sid, str) and sid and "/" not in sid and not sid.startswith("."):
            try:
                summary = summary_of(_read(os.path.join(state, SUMMARY_DIR, sid + STATUS_SUFFIX)))
            except OSError:
                summary = None
        lines.append(render(summary, claude, alive=gateway_alive(state), now=time.time()))
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    return 0

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

TYPE_CHECKING = False  # typing and pathlib cost this command ~6 ms of its budget: not imported
if TYPE_CHECKING:
    from typing import Any

SUMMARY_DIR = "sessions"  # as capture/session_summary.py writes it
WRAPPED_FILE = "statusline-wrapped.json"  # the user's own statusLine, saved by setup/sync
DEFAULT_WINDOW = 200_000
LONG_WINDOW = 1_000_000
LONG_CONTEXT_TOKENS = 200_000  # past this, long-context prices apply
COMPACT_AT = 0.85
LIMIT_AT = 0.90
USER_COMMAND_TIMEOUT = 2.0
CATEGORY_LABELS = {"builtin_tools": "tools", "tool_io": "tool io", "messages": "chat", "assistant": "chat"}


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


def _window_of(claude: dict[str, Any], summary_model: str | None) -> int:
    cw = claude.get("context_window")
    if isinstance(cw, dict):
        for key in ("context_window_size", "size", "max_tokens"):
            if isinstance(cw.get(key), int) and cw[key] > 0:
                return int(cw[key])
    model = claude.get("model")
    model_id = model.get("id") if isinstance(model, dict) else model
    if any("[1m]" in str(m or "") for m in (model_id, summary_model)):
        return LONG_WINDOW
    return DEFAULT_WINDOW


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def render(summary: dict[str, Any] | None, claude: dict[str, Any], *, alive: bool, now: float | None = None) -> str:
    """Our segment. Pure: the summary file's content, Claude Code's JSON, whether the gateway runs."""
    if not alive:
        return "◆ opik-cipx offline"
    if summary is None:
        return "◆ no calls captured yet"
    parts = [f"◆ ${summary.get('cost_usd', 0.0):.2f}" + ("+?" if summary.get("unpriced_calls") else "")]
    last = summary.get("last_main") or {}
    window = _window_of(claude, last.get("model"))
    depth = (last.get("prompt_tokens") or 0) / window if last else None
    if depth is not None:
        parts.append(f"ctx {_pct(depth)}")
    hit = summary.get("cache_hit_rate")
    if isinstance(hit, (int, float)):
        parts.append(f"cache {_pct(hit)}")
    top = [f"{CATEGORY_LABELS.get(n, n)} {_pct(s)}" for n, s in last.get("top_categories") or [] if s]
    if top:
        parts.append(" ".join(top))
    plan = summary.get("plan") or {}
    windows = [f"{short} {_pct(w['utilization'])}" for short, key in (("5h", "five_hour"), ("7d", "seven_day"))
               if isinstance(w := plan.get(key), dict) and isinstance(w.get("utilization"), (int, float))]
    if windows:
        parts.append(" ".join(windows))
    alert = _alert(summary, last, depth, plan)
    if alert:
        parts.append(alert)
    return " · ".join(parts)


def _alert(summary: dict[str, Any], last: dict[str, Any], depth: float | None, plan: dict[str, Any]) -> str | None:
    """At most one, the most urgent first."""
    if summary.get("last_outcome") == "unreachable":
        return "offline: upstream unreachable"
    utilizations = [w.get("utilization") for w in (plan.get("five_hour"), plan.get("seven_day")) if isinstance(w, dict)]
    if plan and (plan.get("status") not in (None, "allowed")
                 or any(isinstance(u, (int, float)) and u >= LIMIT_AT for u in utilizations)):
        return f"limit ({plan.get('status') or 'near'})"
    if depth is not None and depth >= COMPACT_AT:
        return "compact"
    if (last.get("prompt_tokens") or 0) > LONG_CONTEXT_TOKENS:
        return "200k+"
    if last.get("cold"):
        cost = last.get("cost_usd")
        return "cold" + (f" (${cost:.2f})" if isinstance(cost, (int, float)) else "")
    return None


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
                summary = json.loads(_read(os.path.join(state, SUMMARY_DIR, f"{sid}.json")))
            except (OSError, ValueError):
                summary = None
        lines.append(render(summary, claude, alive=gateway_alive(state), now=time.time()))
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    return 0

"""The status-line segment, rendered from a session summary. Pure, standard library only.

Two readers render it: the capture worker, which writes the finished line into each session's
status file so the status-line script only has to print it, and ``opik-cipx statusline``, which
renders the summary in the same file with what Claude Code's status-line JSON adds (its own
context-window size).
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing costs the status line ~4 ms of its budget: not imported
if TYPE_CHECKING:
    from typing import Any

DEFAULT_WINDOW = 200_000
LONG_WINDOW = 1_000_000
LONG_CONTEXT_TOKENS = 200_000  # past this, long-context prices apply
COMPACT_AT = 0.85
LIMIT_AT = 0.90
CATEGORY_LABELS = {"builtin_tools": "tools", "tool_io": "tool io", "messages": "chat", "assistant": "chat"}

# Each session's status file: <CIPX_HOME>/sessions/<session id>.status. Its first line is the
# segment already rendered (the sh script prints it with the `read` builtin: no process to
# start), the second the summary as JSON. One file, because capture rewrites it after every call
# and each file replaced costs about 0.1 ms of kernel time.
SUMMARY_DIR = "sessions"
STATUS_SUFFIX = ".status"


def status_file_text(summary: dict[str, Any]) -> str:
    line = render(summary, {}, alive=True).replace("\n", " ")
    return f"{line}\n{json.dumps(summary, separators=(',', ':'))}\n"


def summary_of(text: str) -> dict[str, Any] | None:
    """The summary a status file holds; None for one that is not (a torn or foreign file)."""
    try:
        summary = json.loads(text.partition("\n")[2])
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def _window_of(claude: dict[str, Any], summary_model: str | None, summary_window: object = None) -> int:
    cw = claude.get("context_window")
    if isinstance(cw, dict):
        for key in ("context_window_size", "size", "max_tokens"):
            if isinstance(cw.get(key), int) and cw[key] > 0:
                return int(cw[key])
    if isinstance(summary_window, int) and summary_window > 0:
        return summary_window
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
    parts = [f"◆ ${summary.get('cost_usd', 0.0):.2f}" + ("+?" if summary.get("unpriced_calls") else "")
             + (" at list" if summary.get("at_list") else "")]
    last = summary.get("last_main") or {}
    window = _window_of(claude, last.get("model"), last.get("context_window"))
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

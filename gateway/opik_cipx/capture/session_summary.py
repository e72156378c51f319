"""A small per-session summary kept current after each stored call, for the status line.

Claude Code runs the status-line command after every assistant message; it must answer in a
few milliseconds, so it must not query the spool or import the gateway. This store stage does
the work once per call, inside the batch's transaction where the call's rows are already
visible: the session's cost so far (subagents and side calls included), its cache-hit rate,
the last main call's prompt size, top categories and cache behaviour, the plan windows the
answer announced, and whether the upstream answered. The result goes to
``<CIPX_HOME>/sessions/<session id>.status`` (the format is in :mod:`opik_cipx.segment`),
replaced atomically, 0600.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from ..attribute import ItemTotal
from ..attribute.analysis import Captured
from ..model import CallKind, Outcome
from ..segment import STATUS_SUFFIX, SUMMARY_DIR, status_file_text
from ..store.spool import Spool
from ..wire.ratelimit import plan_windows
from ..wire.redact import CREDENTIAL_HEADER, OAUTH
from .stages import Committed, StoreStage

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# A cache entry lives 5 minutes by default: a main call after a longer gap re-writes its prefix.
CACHE_TTL_SECONDS = 300.0


def summary_path(home: Path, session_id: str) -> Path | None:
    return home / SUMMARY_DIR / (session_id + STATUS_SUFFIX) if _SAFE_ID.fullmatch(session_id) else None


def session_summary(sp: Spool, item: Captured) -> dict[str, Any] | None:
    ex = item.exchange
    sid = ex.session_id
    if not sid or ex.kind is not CallKind.MESSAGES:
        return None
    conn = sp.conn
    # Kept current by triggers on exchanges (migration m010): one row, however long the session.
    calls, cost, unknown, cache_read, prompt = conn.execute(
        "SELECT calls, cost_usd, unpriced, cache_read, prompt FROM session_totals WHERE session_id = ?",
        (sid,)).fetchone() or (0, 0.0, 0, 0, 0)
    out: dict[str, Any] = {
        "session_id": sid, "updated_at": time.time(), "calls": int(calls), "cost_usd": float(cost),
        "unpriced_calls": int(unknown), "cache_hit_rate": (cache_read / prompt) if prompt else None,
        "last_outcome": ex.outcome.value, "last_error": ex.error if ex.outcome is Outcome.UNREACHABLE else None,
    }
    windows = plan_windows(ex.response_headers)
    if windows is not None:
        out["plan"] = windows
    query = (
        "SELECT e.id, e.model, e.started_at, e.input_tokens, e.cache_creation_input_tokens,"
        " e.cache_read_input_tokens, e.cost_usd, e.request_headers"
        " FROM exchanges e JOIN attribution a ON a.exchange_id = e.id"
        " WHERE e.session_id = ? AND a.call_kind IN ({}) AND e.usage IS NOT NULL"
        " ORDER BY e.started_at DESC LIMIT 2")
    # The conversation's own calls; a client that is not Claude Code has no "main" shape, so
    # then whatever it sent that is not a subagent's or a helper's.
    main = conn.execute(query.format("'main'"), (sid,)).fetchall() or conn.execute(
        query.format("'side', 'compaction'"), (sid,)).fetchall()
    if main:
        last_id, model, at, inp, write, read, last_cost, headers = main[0]
        total = inp + write + read
        if last_id == ex.id and item.attribution is not None:  # the call just stored: its rows are these
            top = _top_categories(item.attribution.items)
        else:
            top = conn.execute(
                "SELECT category, total(tokens) AS t FROM attribution_items WHERE exchange_id = ? AND side = 'request'"
                " GROUP BY category ORDER BY t DESC, category LIMIT 2", (last_id,)).fetchall()
        gap = at - main[1][2] if len(main) > 1 else None
        out["last_main"] = {
            "id": last_id, "model": model, "prompt_tokens": total, "cache_write_tokens": write,
            "cache_read_tokens": read, "cost_usd": last_cost,
            "top_categories": [[name, (tokens / total) if total else 0.0] for name, tokens in top],
            # Re-wrote a prefix that had been cached: an idle gap past the TTL, then mostly writes.
            "cold": bool(gap is not None and gap > CACHE_TTL_SECONDS and write > read),
            "gap_s": gap,
            "context_window": _context_window(headers),
        }
        # A subscription login (OAuth) is not billed per token: the price shown is API list price.
        out["at_list"] = _credential(headers) == OAUTH
    return out


def _top_categories(items: list[ItemTotal]) -> list[tuple[str, int]]:
    """The two categories with the most request tokens, as the query over stored items orders them."""
    sums: dict[str, int] = {}
    for total in items:
        sums[total.category] = sums.get(total.category, 0) + total.tokens
    return sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[:2]


def _credential(request_headers: str | None) -> str | None:
    try:
        kind = json.loads(request_headers or "{}").get(CREDENTIAL_HEADER)
    except (ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _context_window(request_headers: str | None) -> int | None:
    """1M when the call asked for the 1M-token context beta (Claude Code's "(1M context)" models)."""
    try:
        beta = json.loads(request_headers or "{}").get("anthropic-beta") or ""
    except (ValueError, AttributeError):
        return None
    return 1_000_000 if "context-1m" in str(beta) else None


def write_summary(home: Path, summary: dict[str, Any]) -> None:
    """The session's status file: the rendered segment for the status-line script, and the
    summary for ``opik-cipx statusline``."""
    path = summary_path(home, summary["session_id"])
    if path is not None:
        _write_atomic(path, status_file_text(summary))


def _write_atomic(path: Path, text: str) -> None:
    # Replaced by rename, so the status line never reads half a file; the directory is made
    # only when missing (this runs after every call: one syscall less each time).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def summary_stage(home: Path) -> tuple[StoreStage, Committed]:
    """A store stage that works out each call's session summary inside the batch, and what
    writes them once the batch has committed: the files never describe rows a rollback took
    back, and a batch of many calls of one session writes its files once."""
    pending: dict[str, dict[str, Any]] = {}

    def stage(sp: Spool, item: Captured) -> None:
        try:
            summary = session_summary(sp, item)
            if summary is not None:
                pending[summary["session_id"]] = summary  # the batch's last call of the session wins
        except Exception:  # a status line is never worth a lost capture
            log.warning("session summary for %s not worked out", item.exchange.session_id, exc_info=True)

    def committed(ok: bool) -> None:
        done = list(pending.values())
        pending.clear()
        for summary in done if ok else ():
            try:
                write_summary(home, summary)
            except Exception:  # as above: never worth a lost capture
                log.warning("session summary for %s not written", summary["session_id"], exc_info=True)

    return stage, committed

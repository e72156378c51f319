"""Exchanges as capture builds them, from requests recorded from the real Claude Code CLI.

``make_exchange`` pairs a recorded request (tests/fixtures/claude_code) with a JSON response,
priced at the builtin table; ``context`` is the session context spans are built under.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opik_cipx.model import CallKind, Exchange, Outcome, Usage
from opik_cipx.pricing import PriceTable
from opik_cipx.ship.identity import Identity
from opik_cipx.ship.span import SessionContext, session_trace_id

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "claude_code"
PRICES = PriceTable.builtin()
T0 = 1_780_000_000.0
UPDATED = "2026-06-01T00:00:00.000Z"


def recorded_request(scenario: str, label: str) -> tuple[bytes, dict[str, Any]]:
    """The body and sidecar metadata of one request recorded from the real Claude Code CLI."""
    path = next((FIXTURES / scenario).glob(f"*-{label}.json"))
    meta = json.loads(path.with_name(path.stem + ".meta.json").read_text())
    return path.read_bytes(), meta


def make_exchange(
    scenario: str,
    label: str,
    *,
    content: list[dict[str, Any]] | None = None,
    started_at: float = T0,
    ex_id: str | None = None,
    status: int = 200,
    usage: dict[str, Any] | None = None,
) -> Exchange:
    """An Exchange as capture would build it: the recorded request, a JSON response."""
    body, meta = recorded_request(scenario, label)
    headers = {k.lower(): v for k, v in meta["headers"] if k.lower() not in ("x-api-key", "authorization")}
    usage_raw = usage or {
        "input_tokens": 1200, "output_tokens": 80, "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 20000,
    }
    content = content if content is not None else [{"type": "text", "text": "MARKER_REPLY ok"}]
    if status == 200:
        response = {
            "id": "msg_1", "type": "message", "role": "assistant", "model": meta["model"], "content": content,
            "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn",
            "usage": usage_raw,
        }
    else:
        response = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    ex = Exchange(
        id=ex_id or f"{scenario}-{label}",
        started_at=started_at,
        method="POST",
        path=meta["path"],
        kind=CallKind.MESSAGES,
        request_headers=headers,
        request_body=body,
        status=status,
        response_headers={"content-type": "application/json"},
        response_body=json.dumps(response).encode(),
        duration_ms=1500.0,
        ttft_ms=400.0,
        session_id=meta["session_id"],
        agent_id=meta.get("agent_id"),
        model=meta["model"],
        request_bytes=len(body),
        response_bytes=200,
    )
    if status == 200:
        ex.usage = Usage.from_api(usage_raw)
        ex.cost = PRICES.price(ex.model, ex.usage, at=ex.started_at)
        ex.stop_reason = response["stop_reason"]
    else:
        ex.outcome = Outcome.HTTP_ERROR
        ex.error = "overloaded_error: Overloaded"
    return ex


def context(session_id: str, trace_id: str | None = None, **kw: Any) -> SessionContext:
    """A Claude Code session's context as the shipper resolves it (a known user, a trace from T0)."""
    identity = kw.pop("identity", Identity(user_email="ada@example.com", user_uuid="u-1", org_uuid="o-1", source="claude.json"))
    return SessionContext(session_id, trace_id or session_trace_id(session_id, T0), "claude-code", identity, **kw)


def assistant_blocks(scenario: str, label: str) -> list[dict[str, Any]]:
    """The assistant turn that the *next* recorded request echoes back: the real earlier response."""
    body, _ = recorded_request(scenario, label)
    messages = json.loads(body)["messages"]
    return [m for m in messages if m["role"] == "assistant"][-1]["content"]

"""What the span projection needs to know of one call, and where its records go.

:func:`call_facts` reads the new turn and metadata of a request at the places the
attribution walk found them (see ``Attribution.layout``): the body is never
parsed whole a second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..attribute import Attribution, analysis
from ..attribute.analysis import response_content
from ..model import Exchange
from ..pricing import PriceTable
from .identity import Identity
from .uuid7 import uuid7_at

PROVIDER = "anthropic"
MAX_STRING = 32 * 1024  # longer strings in input/output are clipped: one span stays shippable


def iso(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, as Opik stores it."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip(value: Any, limit: int = MAX_STRING) -> Any:
    """``value`` with every string longer than ``limit`` cut, saying how much was cut."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}…[clipped {len(value) - limit} chars]"
    if isinstance(value, list):
        return [clip(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: clip(v, limit) for k, v in value.items()}
    return value


# --- facts about one call (the CPU-heavy part: run it off the event loop) ------------------


@dataclass(slots=True)
class CallFacts:
    exchange: Exchange
    attribution: Attribution
    content: list[dict[str, Any]]  # the response's content blocks
    new_messages: list[Any]  # request messages after the last assistant turn
    message_count: int
    tool_results: dict[str, tuple[Any, bool]]  # tool_use_id -> (content, is_error)
    account_uuid: str | None = None
    chars: dict[str, int] = field(default_factory=dict)  # decoded characters per category

    @property
    def call_kind(self) -> str:
        return self.attribution.call_kind

    @property
    def agent_key(self) -> str:
        """Which conversation inside the session: "main" or the subagent's id."""
        return self.exchange.agent_id or "main"


def _account_uuid(meta: Any) -> str | None:
    """``metadata.user_id``'s account uuid (user_id is itself a JSON string)."""
    user_id = meta.get("user_id") if isinstance(meta, dict) else None
    if not isinstance(user_id, str):
        return None
    try:
        parsed = json.loads(user_id)
    except ValueError:
        return None
    value = parsed.get("account_uuid") if isinstance(parsed, dict) else None
    return value or None if isinstance(value, str) else None


def _trailing_messages(messages: list[Any]) -> list[Any]:
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            return messages[i + 1 :]
    return list(messages)


def _tool_results(messages: list[Any]) -> dict[str, tuple[Any, bool]]:
    out: dict[str, tuple[Any, bool]] = {}
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                tool_use_id = block.get("tool_use_id")
                if isinstance(tool_use_id, str):
                    out[tool_use_id] = (block.get("content"), bool(block.get("is_error")))
    return out


def _chars(attr: Attribution, body: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for region in attr.segments():
        out[region.category] = out.get(region.category, 0) + len(
            body[region.start : region.end].decode("utf-8", "replace")
        )
    return out


def analyze(ex: Exchange, prices: PriceTable | None) -> CallFacts:
    """Parse and attribute one LLM call. Pure CPU: tens of ms for a MB body."""
    content = response_content(ex)
    return call_facts(ex, analysis.analyze(ex, prices, content), content)


def call_facts(ex: Exchange, attr: Attribution, content: list[dict[str, Any]]) -> CallFacts:
    """What the span builder needs of a call whose attribution the capture already made.

    The attribution walk already found where the new turn and ``metadata`` sit in the
    body (``attr.layout``), so only those few bytes are parsed, not the whole context.
    """
    parts = _from_layout(ex.request_body, attr)
    return _facts(ex, attr, content, *(parts or _from_document(ex.request_body)))


def _facts_from_document(ex: Exchange, attr: Attribution, content: list[dict[str, Any]]) -> CallFacts:
    """The same facts from the whole parsed body: for bodies the walk could not read to the end."""
    return _facts(ex, attr, content, *_from_document(ex.request_body))


# (new messages, message count, metadata) of a request body.
_Parts = tuple[list[Any], int, Any]


def _from_layout(body: bytes, attr: Attribution) -> _Parts | None:
    """The parts, parsed only where the walk said they are; None when it could not say."""
    layout = attr.layout
    if layout is None:
        return None
    try:
        trailing = json.loads(b"[" + body[slice(*layout.new_messages)] + b"]") if layout.new_messages else []
        meta = json.loads(body[slice(*layout.metadata)]) if layout.metadata else None
    except ValueError:
        return None
    return trailing, layout.message_count, meta


def _from_document(body: bytes) -> _Parts:
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    # A Responses body (Codex) carries its conversation as "input" items.
    messages = doc.get("messages") if "messages" in doc else doc.get("input")
    messages = messages if isinstance(messages, list) else []
    return _trailing_messages(messages), len(messages), doc.get("metadata")


def _facts(
    ex: Exchange, attr: Attribution, content: list[dict[str, Any]], trailing: list[Any], count: int, meta: Any
) -> CallFacts:
    return CallFacts(
        exchange=ex,
        attribution=attr,
        content=content,
        new_messages=trailing,
        message_count=count,
        tool_results=_tool_results(trailing),
        account_uuid=_account_uuid(meta),
        chars=_chars(attr, ex.request_body),
    )


# --- where a call's records go -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionContext:
    """The session a call belongs to, as the spool and the SessionStart hook know it."""

    session_id: str
    trace_id: str
    project_name: str
    identity: Identity
    parent_span_id: str | None = None  # OPIK_CC_ROOT_SPAN_ID
    own_trace: bool = True  # False when spans land under OPIK_CC_PARENT_TRACE_ID
    cwd: str | None = None
    git_repo: str | None = None
    git_branch: str | None = None
    source: str | None = None  # startup | resume | clear | compact


def session_trace_id(session_id: str, first_started_at: float) -> str:
    return uuid7_at(first_started_at, f"trace:{session_id}")


def llm_span_id(ex: Exchange) -> str:
    return uuid7_at(ex.started_at, f"llm:{ex.id}")


def tool_span_id(tool_use_id: str, started_at: float) -> str:
    return uuid7_at(started_at, f"tool:{tool_use_id}")


def end_of(ex: Exchange) -> float:
    return ex.started_at + (ex.duration_ms or 0.0) / 1000.0

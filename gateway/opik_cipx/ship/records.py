"""One analysed call -> its trace and span records, given what the session's trace holds so far.

:func:`project_call` is pure: the session's :class:`TraceState` and its open tool
sub-spans in, the records to queue and the state to keep out. :func:`record_call`
runs it inside one outbox transaction, so a call's records and its mark are
written together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..store.migrations import transaction
from .outbox import QUEUED, Outbox
from .privacy import iso_now, redact_record
from .span import (
    CallFacts,
    SessionContext,
    TraceState,
    complete_tool_span,
    end_of,
    first_prompt,
    llm_span,
    response_text,
    session_trace,
    session_trace_id,
    tool_spans,
)


@dataclass(slots=True)
class RecordResult:
    state: str  # QUEUED / DISABLED / ... / "duplicate" when the exchange was already recorded
    records: int = 0
    span_id: str | None = None


@dataclass(slots=True)
class Projection:
    """What one call adds to its session's trace."""

    records: list[tuple[str, dict[str, Any]]]  # (trace | span, record), trace first when there is one
    state: TraceState  # the trace's state after this call
    span_id: str  # the call's own llm span
    opened: dict[str, dict[str, Any]] = field(default_factory=dict)  # tool_use_id -> open sub-span
    closed: list[str] = field(default_factory=list)  # tool_use_ids whose sub-spans this call completed


def session_key(session_id: str | None, exchange_id: str) -> str:
    # Calls without a session id (not Claude Code) each get a trace of their own.
    return session_id or f"exchange:{exchange_id}"


def restore_state(text: str) -> TraceState:
    """A stored TraceState; keys another version wrote that this one lacks are dropped."""
    data = json.loads(text)
    known = {f.name for f in fields(TraceState)}
    return TraceState(**{k: v for k, v in data.items() if k in known})


def project_call(
    facts: CallFacts,
    ctx: SessionContext,
    state: TraceState,
    open_tools: Mapping[str, dict[str, Any]],
    *,
    updated_at: str,
) -> Projection:
    """The records one call adds; ``state`` is updated in place and returned in the projection.

    ``open_tools`` holds the session's open tool sub-spans this call's tool results may complete.
    """
    ex = facts.exchange
    ended = end_of(ex)
    previous = state.last_request_bytes.get(facts.agent_key)
    span = llm_span(facts, ctx, updated_at=updated_at, previous_request_bytes=previous)
    out = Projection([("span", span)], state, span["id"])

    # Results in this request complete the tool sub-spans opened by earlier calls.
    for tool_use_id, (result, is_error) in facts.tool_results.items():
        opened = open_tools.get(tool_use_id)
        if opened is None:
            continue
        done = complete_tool_span(opened, result, is_error, ended_at=ex.started_at, updated_at=updated_at)
        out.records.append(("span", done))
        out.closed.append(tool_use_id)
    for tool_use_id, tool in tool_spans(facts, ctx, updated_at=updated_at).items():
        out.opened[tool_use_id] = tool
        out.records.append(("span", tool))

    state.calls += 1
    state.started_at = min(state.started_at, ex.started_at)
    state.ended_at = max(state.ended_at, ended)
    if state.first_prompt is None and not ex.agent_id:
        state.first_prompt = first_prompt(facts)
    if facts.call_kind in ("main", "side") and not ex.agent_id:
        state.last_output = response_text(facts) or state.last_output
    if ex.agent_id and ex.agent_id not in state.agents:
        state.agents.append(ex.agent_id)
    if ex.cost is not None and ex.cost.total_usd is not None:
        state.cost_usd += ex.cost.total_usd
    elif ex.usage is not None:
        state.unknown_cost_calls += 1
    state.last_request_bytes[facts.agent_key] = ex.request_bytes
    if ctx.own_trace:
        out.records.insert(0, ("trace", session_trace(ctx, state, updated_at=updated_at)))
    return out


def record_call(
    outbox: Outbox,
    facts: CallFacts,
    resolve: Callable[[str], SessionContext],
    *,
    capture_content: bool,
    updated_at: str | None = None,
) -> RecordResult:
    """Turn one analysed call into queued records, in one transaction with its mark.

    ``resolve(trace_id)`` builds the call's SessionContext given the session's own
    trace id (it may substitute a parent trace from the session's environment).
    """
    ex = facts.exchange
    updated_at = updated_at or iso_now()
    key = session_key(ex.session_id, ex.id)
    with transaction(outbox.conn):
        if outbox.is_marked(ex.id):
            return RecordResult("duplicate")
        stored = outbox.session_state(key)
        if stored is None:
            state = TraceState(session_trace_id(key, ex.started_at), ex.started_at, end_of(ex))
        else:
            state = restore_state(stored)
        ctx = resolve(state.trace_id)
        projection = project_call(
            facts, ctx, state, outbox.open_tool_spans(key, list(facts.tool_results)), updated_at=updated_at
        )
        records = projection.records
        if not capture_content:
            records = [(kind, redact_record(record, applied_at=updated_at)) for kind, record in records]
        outbox.save_call(
            ex.id,
            key,
            records,
            state=json.dumps(asdict(projection.state), separators=(",", ":")),
            opened=projection.opened,
            closed=projection.closed,
        )
    return RecordResult(QUEUED, len(records), projection.span_id)

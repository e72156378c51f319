"""Attribution of a stored call, priced: the one place that joins an Exchange to ``attribute/``.

The capture stage, ``explain``, the viewer and the span builder all call
:func:`analyze`, so a byte lands in the same bucket whichever of them looks.
Pure: an Exchange and a price table in, an Attribution out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model import CallKind, Exchange
from ..pricing import PriceTable
from ..wire.response import read_response
from ..wire.responses import read_responses
from . import Attribution, allocate, attribute_request
from .responses import Context, allocate_chained, attribute_responses, output_blocks
from .resume import WalkCache


def response_content(ex: Exchange) -> list[dict[str, Any]]:
    """The response's content blocks, rebuilt from the stored (decoded) body."""
    if ex.status is None or not ex.response_body:
        return []
    content_type = ex.response_headers.get("content-type", "")
    if ex.kind is CallKind.RESPONSES:
        websocket = ex.method == "WEBSOCKET"  # stored as JSON lines, one message each
        chunks = [(0.0, line) for line in ex.response_body.split(b"\n")] if websocket else [(0.0, ex.response_body)]
        return read_responses(ex.status, content_type, chunks, websocket=websocket).content
    return read_response(ex.status, content_type, [(0.0, ex.response_body)]).content


def analyze(
    ex: Exchange,
    prices: PriceTable | None,
    content: list[dict[str, Any]] | None = None,
    commands: tuple[str, ...] = (),
    calls: Mapping[str, str] | None = None,
    inherited: Context | None = None,
    walk_cache: WalkCache | None = None,
) -> Attribution:
    """Regions of the request body, with the call's billed tokens and cost shared over them.

    ``content`` is the response's content blocks when the caller already has them;
    ``commands`` names the session's custom slash commands (see capture/commands.py); ``calls``
    names the tools earlier responses called, for a Responses turn's tool outputs, and
    ``inherited`` the server-side context a turn chained with ``previous_response_id`` bills for.
    ``walk_cache``: the capture path's memory of each session's last walk (attribute/resume.py),
    so a call that resends the conversation is walked from where the last one ended.
    """
    responses = ex.kind is CallKind.RESPONSES
    if responses:
        attr = attribute_responses(ex.request_body, calls=calls)
    else:
        key = (ex.session_id, ex.agent_id) if walk_cache is not None and ex.session_id else None
        attr = attribute_request(ex.request_body, headers=ex.request_headers, path=ex.path, commands=commands,
                                 cache=walk_cache, cache_key=key)
    usage = ex.usage
    rates = None
    if prices is not None and usage is not None:
        rates = prices.rates(
            ex.model,
            at=ex.started_at,
            prompt_tokens=usage.prompt_tokens,
            speed=usage.speed,
            inference_geo=usage.inference_geo,
        )
    blocks = response_content(ex) if content is None else content
    if responses:
        out = allocate_chained(attr, usage, rates, output_blocks(blocks), inherited or {})
        if calls:
            out.cache_split["calls"] = dict(calls)  # stored: a re-analysis names the same tools
        return out
    return allocate(attr, usage, rates, blocks)


@dataclass(slots=True)
class Captured:
    """One finished call as the stages see it: the Exchange and, for LLM calls, its analysis."""

    exchange: Exchange
    attribution: Attribution | None = None
    content: list[dict[str, Any]] = field(default_factory=list)  # the response's content blocks
    commands: tuple[str, ...] = ()  # the session's custom slash commands attribution used



@dataclass(frozen=True, slots=True)
class CompactionDelta:
    """How much a compaction shrank the conversation: this call versus the next one."""

    exchange_id: str
    next_exchange_id: str | None
    messages_bytes_before: int
    messages_bytes_after: int | None
    prompt_tokens_before: int
    prompt_tokens_after: int | None

    @property
    def bytes_saved(self) -> int | None:
        if self.messages_bytes_after is None:
            return None
        return self.messages_bytes_before - self.messages_bytes_after


@dataclass(frozen=True, slots=True)
class SessionCall:
    """What the session view needs of one call, in order."""

    exchange_id: str
    started_at: float
    call_kind: str
    agent_id: str | None
    messages_bytes: int
    prompt_tokens: int


def compaction_deltas(calls: list[SessionCall]) -> dict[str, CompactionDelta]:
    """Pair every compaction call with the next main-agent call of the same session.

    The compaction request carries the whole old conversation; the first main
    call after it carries the summary instead, so the pair gives the size before
    and after. Subagent and side calls in between are skipped: they have their
    own conversations.
    """
    ordered = sorted(calls, key=lambda c: (c.started_at, c.exchange_id))
    out: dict[str, CompactionDelta] = {}
    for i, call in enumerate(ordered):
        if call.call_kind != "compaction":
            continue
        after = next((c for c in ordered[i + 1 :] if c.call_kind == "main"), None)
        out[call.exchange_id] = CompactionDelta(
            exchange_id=call.exchange_id,
            next_exchange_id=after.exchange_id if after else None,
            messages_bytes_before=call.messages_bytes,
            messages_bytes_after=after.messages_bytes if after else None,
            prompt_tokens_before=call.prompt_tokens,
            prompt_tokens_after=after.prompt_tokens if after else None,
        )
    return out

"""Recommendations from the order of a session's calls: cold caches, long context, compactions.

Each reads the window's LLM calls once, in session order, from the per-call usage
and cost the spool already holds (no bodies), and prices the alternative with the
same price table, at each call's own date and tier:

* ``cold_cache``: a call that wrote again a prefix its conversation had cached, after
  an idle gap longer than the cache's lifetime. The rewritten tokens are the prefix
  the previous call of the same conversation had cached, less what this call still
  read. A 1-hour TTL turns those writes into reads when the gap was under an hour,
  and costs 2x instead of 1.25x input on every write of that conversation.
* ``long_context``: calls billed at a long-context tier; the premium is the cost at
  the tier minus the same usage at the base rates.
* ``compaction``: what each compaction call cost, the prompt tokens it cut from the
  next main call, and what that cut saved over the main calls up to the next
  compaction, each at its own per-token prompt price.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from ..model import Usage
from ..pricing import PriceTable, Rates
from . import stats
from .recommend import EVIDENCE_LIMIT, Recommendation

FIVE_MINUTES = 300.0
ONE_HOUR = 3600.0
# The API's smallest cacheable prompt is about 1,024 tokens: a smaller re-write is not a prefix.
MIN_REWRITE_TOKENS = 1024
TTL_1H_SETTING = '{"env": {"ENABLE_PROMPT_CACHING_1H": "1"}}'
COMPACT_SETTING = '{"autoCompactWindow": 200000}'
_USAGE_FIELDS = frozenset(f.name for f in fields(Usage))


@dataclass(frozen=True, slots=True)
class Call:
    id: str
    started_at: float
    session_id: str | None
    agent_id: str | None
    call_kind: str
    model: str | None
    usage: Usage
    cost_usd: float | None
    cost: dict[str, Any]

    @property
    def lineage(self) -> tuple[str, str]:
        """The conversation whose prefix this call extends: the main agent's, or one subagent's."""
        return (self.session_id or self.id, self.agent_id or "")


def calls(conn: sqlite3.Connection, win: stats.Window) -> Iterator[Call]:
    """The window's attributed LLM calls with usage, session by session, oldest first."""
    where, params = stats.where(win, "e")
    for row in conn.execute(
        "SELECT e.id, e.started_at, e.session_id, e.agent_id, a.call_kind, e.model, e.usage, e.cost_usd, e.cost"
        f" FROM exchanges e JOIN attribution a ON a.exchange_id = e.id WHERE {where} AND e.usage IS NOT NULL"
        " ORDER BY coalesce(e.session_id, e.id), e.started_at, e.id",
        params,
    ):
        raw = json.loads(row[6])
        usage = Usage(**{k: v for k, v in raw.items() if k in _USAGE_FIELDS})
        yield Call(row[0], row[1], row[2], row[3], row[4], row[5], usage, row[7], json.loads(row[8] or "{}"))


def _rates(prices: PriceTable, call: Call, prompt_tokens: int | None = None) -> Rates | None:
    u = call.usage
    return prices.rates(call.model, at=call.started_at,
                        prompt_tokens=u.prompt_tokens if prompt_tokens is None else prompt_tokens,
                        speed=u.speed, inference_geo=u.inference_geo)


def _writes(u: Usage) -> tuple[int, int]:
    """(5-minute, 1-hour) cache-write tokens, as pricing splits them."""
    if u.cache_creation_5m is None and u.cache_creation_1h is None:
        return u.cache_creation_input_tokens, 0
    one_hour = u.cache_creation_1h or 0
    five = u.cache_creation_5m if u.cache_creation_5m is not None else max(u.cache_creation_input_tokens - one_hour, 0)
    return five, one_hour


@dataclass(slots=True)
class _Lineage:
    last: Call | None = None
    writes_5m: int = 0  # every 5-minute write of the conversation, for the 1-hour premium
    premium_usd: float = 0.0


@dataclass(slots=True)
class _Cold:
    ids: list[str] = field(default_factory=list)  # evidence, up to EVIDENCE_LIMIT
    calls: int = 0
    sessions: int = 0
    rewritten: int = 0
    rewrite_usd: float = 0.0
    alternative_usd: float = 0.0  # the same tokens with a 1-hour TTL: a read under an hour, a 1h write above
    premium_usd: float = 0.0  # the 1-hour write premium on the other writes of sessions with cold calls
    gaps: list[float] = field(default_factory=list)


def _cold_session(session: list[Call], prices: PriceTable, acc: _Cold) -> None:
    lineages: dict[tuple[str, str], _Lineage] = {}
    cold_before = acc.calls
    for call in session:
        if call.call_kind not in ("main", "subagent"):
            continue  # title and side calls have prefixes of their own
        state = lineages.setdefault(call.lineage, _Lineage())
        rates = _rates(prices, call)
        five, _ = _writes(call.usage)
        prev = state.last
        state.last = call
        if rates is None:
            continue
        if prev is not None:
            prev_five, prev_hour = _writes(prev.usage)
            ttl = ONE_HOUR if prev_hour else FIVE_MINUTES
            gap = call.started_at - prev.started_at
            cached = prev.usage.cache_read_input_tokens + prev_five + prev_hour
            redo = min(five, max(0, cached - call.usage.cache_read_input_tokens))
            if gap > ttl and ttl == FIVE_MINUTES and redo >= MIN_REWRITE_TOKENS:
                if len(acc.ids) < EVIDENCE_LIMIT:
                    acc.ids.append(call.id)
                acc.calls += 1
                acc.gaps.append(gap)
                acc.rewritten += redo
                acc.rewrite_usd += redo * rates.cache_write_5m
                acc.alternative_usd += redo * (rates.cache_read if gap <= ONE_HOUR else rates.cache_write_1h)
                five -= redo  # those tokens are accounted for above, not in the premium
        state.premium_usd += five * (rates.cache_write_1h - rates.cache_write_5m)
    if acc.calls > cold_before:
        acc.sessions += 1
        acc.premium_usd += math.fsum(s.premium_usd for s in lineages.values())


def _cold_recommendation(acc: _Cold) -> Recommendation | None:
    if not acc.calls:
        return None
    net = acc.rewrite_usd - acc.alternative_usd - acc.premium_usd
    gaps = sorted(acc.gaps)
    detail = {"rewrite_cost_usd": acc.rewrite_usd, "ttl_1h_cost_usd": acc.alternative_usd + acc.premium_usd,
              "ttl_1h_write_premium_usd": acc.premium_usd, "sessions": acc.sessions,
              "median_gap_s": round(gaps[len(gaps) // 2], 1), "max_gap_s": round(gaps[-1], 1)}
    if net > 0:
        action = (f"add {TTL_1H_SETTING} to your settings: cache writes then last an hour"
                  " (they cost 2x input instead of 1.25x; the saving counts that)")
    else:
        action = ("a 1-hour cache TTL would cost more than it saves here (the longer writes cost more than the"
                  " re-writes); the re-writes come from idle gaps over 5 minutes")
    return Recommendation("cold_cache", "5-minute prompt cache", acc.calls, acc.sessions, acc.rewritten,
                          max(0.0, net), action, acc.ids, detail)


def _base_cost(prices: PriceTable, call: Call) -> float | None:
    """What the call's usage costs at the model's base (not long-context) rates."""
    rates = _rates(prices, call, prompt_tokens=0)
    if rates is None:
        return None
    u = call.usage
    five, one_hour = _writes(u)
    return math.fsum((u.input_tokens * rates.input, five * rates.cache_write_5m, one_hour * rates.cache_write_1h,
                      u.cache_read_input_tokens * rates.cache_read, u.output_tokens * rates.output,
                      u.web_search_requests * rates.web_search_per_request))


@dataclass(slots=True)
class _Long:
    ids: list[str] = field(default_factory=list)  # evidence, up to EVIDENCE_LIMIT
    calls: int = 0
    prompt_tokens: int = 0
    per_session: dict[str, float] = field(default_factory=dict)  # premium per session


def _long_session(session: list[Call], prices: PriceTable, acc: _Long) -> None:
    for call in session:
        if not call.cost.get("long_context") or call.cost_usd is None:
            continue
        base = _base_cost(prices, call)
        if base is None:
            continue
        if len(acc.ids) < EVIDENCE_LIMIT:
            acc.ids.append(call.id)
        acc.calls += 1
        key = call.lineage[0]
        acc.per_session[key] = acc.per_session.get(key, 0.0) + (call.cost_usd - base)
        acc.prompt_tokens += call.usage.prompt_tokens


def _long_recommendation(acc: _Long) -> Recommendation | None:
    if not acc.calls:
        return None
    premium = math.fsum(acc.per_session.values())
    top = sorted(acc.per_session.items(), key=lambda kv: -kv[1])[:20]
    detail = {"premium_by_session_usd": {s: round(v, 6) for s, v in top}, "session_count": len(acc.per_session)}
    action = (f"add {COMPACT_SETTING} to your settings: Claude Code then compacts before the context passes the"
              " 200k-token price threshold (each compaction is one more call; see `compaction`)")
    return Recommendation("long_context", "long-context price tier", acc.calls, len(acc.per_session),
                          acc.prompt_tokens, premium, action, acc.ids, detail)


def _prompt_price(call: Call) -> float | None:
    """The call's measured cost per prompt token: its cost less output and web search."""
    u = call.usage
    if call.cost_usd is None or not u.prompt_tokens:
        return None
    parts = call.cost.get("parts") or {}
    return (call.cost_usd - float(parts.get("output", 0.0)) - float(parts.get("web_search", 0.0))) / u.prompt_tokens


def compactions(session: list[Call]) -> list[Recommendation]:
    """One entry per compaction call of one session, in order."""
    out: list[Recommendation] = []
    open_: Recommendation | None = None
    cut = 0
    for call in session:
        if call.call_kind == "compaction":
            before = call.usage.prompt_tokens
            open_ = Recommendation("compaction", call.session_id or call.id, 0, 1, 0, -(call.cost_usd or 0.0), "",
                                   [call.id], {"cost_usd": call.cost_usd or 0.0, "prompt_tokens_before": before,
                                               "prompt_tokens_after": None, "saved_usd": 0.0})
            out.append(open_)
            cut = -1  # set by the next main call
        elif call.call_kind == "main" and open_ is not None:
            if cut < 0:
                cut = max(0, open_.detail["prompt_tokens_before"] - call.usage.prompt_tokens)
                open_.detail["prompt_tokens_after"] = call.usage.prompt_tokens
                open_.tokens = cut
                open_.evidence.append(call.id)
            price = _prompt_price(call)
            if price is not None:
                open_.detail["saved_usd"] += cut * price
            open_.calls_present += 1
    for rec in out:
        d = rec.detail
        rec.saving_usd = d["saved_usd"] - d["cost_usd"]
        paid = "paid for itself" if rec.saving_usd > 0 else "has not paid for itself yet"
        rec.action = (f"informational: it cost ${d['cost_usd']:.4f} and cut {rec.tokens:,} prompt tokens from each"
                      f" of the {rec.calls_present} main calls after it (${d['saved_usd']:.4f}): it {paid}")
    return out


def sessions(conn: sqlite3.Connection, win: stats.Window) -> Iterator[list[Call]]:
    """The window's calls one session at a time: memory holds one session, not the window."""
    for _, group in itertools.groupby(calls(conn, win), key=lambda c: c.lineage[0]):
        yield list(group)


def context_recommendations(conn: sqlite3.Connection, win: stats.Window, prices: PriceTable) -> list[Recommendation]:
    cold, long, compacted = _Cold(), _Long(), []
    for session in sessions(conn, win):
        _cold_session(session, prices, cold)
        _long_session(session, prices, long)
        compacted += compactions(session)
    found = [_cold_recommendation(cold), _long_recommendation(long)]
    return [r for r in found if r is not None] + compacted

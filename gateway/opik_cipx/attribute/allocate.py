"""Billed tokens and cost shared over the attributed regions, summing exactly.

No tokenizer: tokens follow wire bytes. The cache makes a flat share wrong (a
system prompt read from cache costs a tenth of a fresh tool result), so the body
is cut where the API's cache cut it. The cached prefix runs in API order (tools,
then system, then messages) up to a ``cache_control`` breakpoint, whatever the
key order in the body. Usage says how many tokens were read from cache and how
many written, not where; so:

* the **read** boundary is the breakpoint (or the empty prefix) whose cumulative
  byte share is closest to ``cache_read / prompt``;
* the **write** boundary is the breakpoint at or after it whose share is closest to
  ``(cache_read + cache_creation) / prompt`` — normally the last breakpoint;
* bytes before the read boundary share ``cache_read_input_tokens`` at the
  cache-read price, bytes up to the write boundary share
  ``cache_creation_input_tokens`` at the cache-write price (5m/1h blended by the
  usage's TTL split when given), the rest shares ``input_tokens`` at the input
  price. Bytes outside tools/system/messages (model, metadata, top-level
  punctuation) are never cached and sit in the tail.

Each share is a largest-remainder split, so every segment sums exactly to its
usage figure; when a segment has tokens but no bytes, its tokens are spread over
the whole body instead (``cache_split["fallback"]`` says so).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

from ..model import Usage
from . import profile
from .types import CATEGORIES, GROUP_NAMES, OUTPUT, UNATTRIBUTED, Attribution, ItemTotal


class RatesLike(Protocol):
    # Read-only members, so frozen price rows (pricing.Rates) satisfy it.
    @property
    def input(self) -> float: ...
    @property
    def cache_write_5m(self) -> float: ...
    @property
    def cache_write_1h(self) -> float: ...
    @property
    def cache_read(self) -> float: ...
    @property
    def output(self) -> float: ...


def largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum to ``total``.

    Exact integer arithmetic; remainders go to the largest fractional parts,
    ties to the earlier weight. All-zero weights split evenly the same way.
    """
    if not weights:
        return []
    if total <= 0:
        return [0] * len(weights)
    denom = sum(weights)
    if denom <= 0:
        weights = [1] * len(weights)
        denom = len(weights)
    shares = [total * w // denom for w in weights]
    left = total - sum(shares)
    if left:
        order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % denom), i))
        for i in order[:left]:
            shares[i] += 1
    return shares


def _output_weights(content: Iterable[object]) -> list[tuple[str, int]]:
    # The blocks as they came off the wire: anything that is not an object is skipped.
    out: list[tuple[str, int]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            out.append(("text", len(str(block.get("text") or ""))))
        elif kind == "thinking":
            out.append(("thinking", len(str(block.get("thinking") or ""))))
        elif kind == "redacted_thinking":
            out.append(("thinking", len(str(block.get("data") or ""))))
        elif kind in ("tool_use", "server_tool_use"):
            payload = block.get("input")
            size = len(payload) if isinstance(payload, str) else len(json.dumps(payload, ensure_ascii=False))
            out.append((f"tool_use:{block.get('name') or '(unknown)'}", size))
        else:
            out.append((str(kind or "(unknown)"), len(json.dumps(block, ensure_ascii=False, default=str))))
    return out


def _output_items(
    usage: Usage | None, rates: RatesLike | None, content: list[dict[str, Any]] | None
) -> list[ItemTotal]:
    tokens = usage.output_tokens if usage else 0
    weights: dict[str, int] = {}
    for name, size in _output_weights(content or []):
        weights[name] = weights.get(name, 0) + size
    if not weights:
        if not tokens:
            return []
        weights = {"(no content)": 0}
    names = list(weights)
    shares = largest_remainder(tokens, [weights[n] for n in names])
    return [
        ItemTotal(OUTPUT, name, weights[name], share, share * rates.output if rates else None, {"chars": weights[name]})
        for name, share in zip(names, shares)
    ]


def allocate(
    attr: Attribution,
    usage: Usage | None,
    rates: RatesLike | None,
    response_content: list[dict[str, Any]] | None = None,
) -> Attribution:
    """A copy of ``attr`` with tokens and cost on every item and category."""
    bins = attr.bins
    if bins is None:
        bins = {}
        profile.add_segments(bins, attr.segments(), attr.spans, profile.candidates(attr.breakpoints))
    # One unit per bin (profile.py): the bytes of each item between two breakpoints, in cache order.
    units = profile.ordered(bins)
    keys = [u[0] for u in units]
    cumulative = [0]
    for u in units:
        cumulative.append(cumulative[-1] + u[1])
    body = cumulative[-1]

    def prefix_bytes(key: tuple[int, int]) -> int:
        return cumulative[bisect.bisect_left(keys, key)]

    candidates = [(-1, 0)] + sorted({(bp.group, bp.pos) for bp in attr.breakpoints})
    read = usage.cache_read_input_tokens if usage else 0
    write = usage.cache_creation_input_tokens if usage else 0
    fresh = usage.input_tokens if usage else 0
    prompt = read + write + fresh

    def closest(options: list[tuple[int, int]], target_tokens: int) -> tuple[int, int]:
        if not prompt or not body:
            return options[0]
        return min(options, key=lambda k: abs(prefix_bytes(k) * prompt - target_tokens * body))

    read_key = closest(candidates, read) if read else candidates[0]
    after = [k for k in candidates if k >= read_key]
    write_key = closest(after, read + write) if write else read_key
    read_end = bisect.bisect_left(keys, read_key)
    write_end = bisect.bisect_left(keys, write_key)

    item_keys: list[tuple[str, str]] = []
    index: dict[tuple[str, str], int] = {}
    for u in units:
        for key in u[2]:
            if key not in index:
                index[key] = len(item_keys)
                item_keys.append(key)
    if not item_keys:  # an empty body still has to carry the billed tokens somewhere
        index[(UNATTRIBUTED, "")] = 0
        item_keys.append((UNATTRIBUTED, ""))
    split = {name: [0] * len(item_keys) for name in ("cache_read", "cache_write", "input")}
    fallback: list[str] = []
    for name, lo, hi, tokens in (
        ("cache_read", 0, read_end, read),
        ("cache_write", read_end, write_end, write),
        ("input", write_end, len(units), fresh),
    ):
        if not tokens:
            continue
        segment = units[lo:hi]
        if not any(u[1] for u in segment):
            fallback.append(name)
            segment = units
        weights = [0] * len(item_keys)
        for u in segment:
            for key, size in u[2].items():
                weights[index[key]] += size
        for i, share in enumerate(largest_remainder(tokens, weights)):
            split[name][i] += share

    write_rate = None
    if rates is not None:
        write_rate = rates.cache_write_5m
        five, hour = (usage.cache_creation_5m, usage.cache_creation_1h) if usage else (None, None)
        if five is not None and hour is not None and five + hour > 0:
            write_rate = (five * rates.cache_write_5m + hour * rates.cache_write_1h) / (five + hour)
        elif any(bp.ttl == "1h" and (bp.group, bp.pos) <= write_key for bp in attr.breakpoints):
            write_rate = rates.cache_write_1h

    old = {(t.category, t.item): t for t in attr.items}
    items: list[ItemTotal] = []
    for i, key in enumerate(item_keys):
        base = old.get(key) or ItemTotal(key[0], key[1])
        r, w, f = split["cache_read"][i], split["cache_write"][i], split["input"][i]
        cost = None
        if rates is not None and write_rate is not None:
            cost = r * rates.cache_read + w * write_rate + f * rates.input
        detail = dict(base.detail)
        detail["tokens_split"] = {"cache_read": r, "cache_write": w, "input": f}
        items.append(ItemTotal(key[0], key[1], base.bytes, r + w + f, cost, detail))
    for key, base in old.items():
        if key not in index:  # zero-byte items (e.g. tool_use counts) keep their detail
            items.append(replace(base, detail=dict(base.detail), tokens=0, cost_usd=0.0 if rates else None))

    categories = {name: ItemTotal(name, "", cost_usd=0.0 if rates else None) for name in CATEGORIES}
    for total in items:
        cat = categories.setdefault(total.category, ItemTotal(total.category, "", cost_usd=0.0 if rates else None))
        cat.bytes += total.bytes
        cat.tokens += total.tokens
        cat.detail["items"] = cat.detail.get("items", 0) + 1
        if cat.cost_usd is not None and total.cost_usd is not None:
            cat.cost_usd += total.cost_usd

    def describe(key: tuple[int, int]) -> dict[str, Any]:
        if key[0] < 0:
            return {"group": None, "pos": 0}
        return {"group": GROUP_NAMES[key[0]], "pos": key[1]}

    cache_split = {
        "read_boundary": describe(read_key),
        "write_boundary": describe(write_key),
        "breakpoints": len(attr.breakpoints),
        "bytes": {
            "cache_read": cumulative[read_end],
            "cache_write": cumulative[write_end] - cumulative[read_end],
            "input": body - cumulative[write_end],
        },
        "tokens": {"cache_read": read, "cache_write": write, "input": fresh},
        "read_share_target": read / prompt if prompt else 0.0,
        "read_share_bytes": cumulative[read_end] / body if body else 0.0,
        "fallback": fallback,
    }
    return replace(
        attr,
        regions=list(attr.regions),
        items=items,
        categories=categories,
        output_items=_output_items(usage, rates, response_content),
        cache_split=cache_split,
    )

"""Where two bodies part and which of the earlier body's chunks the later one reuses (store/chunks.py)."""

from __future__ import annotations

import os
import random

import pytest

from opik_cipx.store.chunks import chunk_bounds, common_prefix, common_suffix, splice
from tests.support.long_session import edited, grow, with_turn


def _naive_prefix(a: bytes, b: bytes) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _naive_suffix(a: bytes, b: bytes, limit: int) -> int:
    n = 0
    while n < min(len(a), len(b), limit) and a[-n - 1] == b[-n - 1]:
        n += 1
    return n


@pytest.mark.parametrize("seed", range(40))
def test_common_prefix_and_suffix_agree_with_a_byte_by_byte_walk(seed: int) -> None:
    rng = random.Random(seed)
    base = os.urandom(rng.choice([0, 1, 31, 33, 1000, 70_000, 200_000]))
    cut = rng.randint(0, len(base))
    other = base[:cut] + os.urandom(rng.randint(0, 3)) + base[cut + rng.randint(0, 5):]
    if rng.random() < 0.3:
        other = base  # identical
    assert common_prefix(base, other) == _naive_prefix(base, other)
    p = common_prefix(base, other)
    limit = min(len(base), len(other)) - p
    assert common_suffix(base, other, limit) == _naive_suffix(base, other, limit)


def test_chunk_bounds_of_a_range_cover_exactly_that_range() -> None:
    body = next(iter(grow(30)))
    whole = chunk_bounds(body)
    start, end = whole[3][0], whole[-2][1]
    part = chunk_bounds(body, start, end)
    assert part[0][0] == start and part[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(part, part[1:], strict=False))
    # Started at one of the whole body's cuts, the range is cut just as the whole body was.
    assert part == [r for r in whole if start <= r[0] and r[1] <= end]


def _rebuilt(prev: bytes, body: bytes) -> list[tuple[int, int]]:
    bounds = chunk_bounds(prev)
    plan = splice(prev, bounds, body)
    shift = len(body) - len(prev)
    kept_tail = bounds[len(bounds) - plan.tail:] if plan.tail else []
    for s, e in bounds[: plan.head]:
        assert body[s:e] == prev[s:e]
    for s, e in kept_tail:
        assert body[s + shift:e + shift] == prev[s:e]
    return bounds[: plan.head] + chunk_bounds(body, plan.start, plan.end) + [(s + shift, e + shift) for s, e in kept_tail]


@pytest.mark.parametrize("how", ["next_turn", "system", "compaction", "early_edit", "cache_control", "same"])
def test_a_splice_tiles_the_new_body_with_chunks_whose_bytes_are_unchanged(how: str) -> None:
    bodies = list(grow(40))
    prev = bodies[-2]
    body = {"next_turn": bodies[-1], "same": prev}.get(how) or edited(prev, how)
    bounds = _rebuilt(prev, body)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(body)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:], strict=False))


def test_the_next_turn_reuses_all_but_the_chunks_around_its_new_bytes() -> None:
    prev = list(grow(60))[-1]
    body = with_turn(prev, 5 * 1024)
    bounds = chunk_bounds(prev)
    plan = splice(prev, bounds, body)
    # Only the new turn and the chunk the moved cache marker sat in are fresh.
    assert plan.end - plan.start < 5 * 1024 + 2 * 64 * 1024
    assert plan.head + plan.tail >= len(bounds) - 3
    assert plan.tail > 0  # the system prompt and tools after the messages

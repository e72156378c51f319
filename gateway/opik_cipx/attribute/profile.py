"""Bytes per item between the cache breakpoints: all :func:`~.allocate.allocate` needs of the regions.

Allocation cuts the body only at ``cache_control`` breakpoints (in the API's cache
order: tools, system, messages, then the rest), so the byte count of every item
between two neighbouring breakpoints — a *bin* — decides every share. Bins are
built in one pass over the segments in byte order, and a call that resumes the
previous call's walk (resume.py) goes on from that call's bins: a breakpoint
before the reused prefix is the same in both calls, so every bin there is too.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from .types import GROUP_MESSAGES, GROUP_SYSTEM, GROUP_TAIL, GROUP_TOOLS, Breakpoint

Key = tuple[str, str]
# group -> {bin start (a breakpoint's pos; -1 before the group's first one): [bytes, {item: bytes}]}
Bins = dict[int, dict[int, list]]  # type: ignore[type-arg]
HEAD = -1


def candidates(breakpoints: Iterable[Breakpoint]) -> dict[int, list[int]]:
    """Each group's breakpoint positions, sorted."""
    out: dict[int, set[int]] = {}
    for bp in breakpoints:
        out.setdefault(bp.group, set()).add(bp.pos)
    return {g: sorted(v) for g, v in out.items()}


def copy_bins(bins: Bins) -> Bins:
    return {g: {b: [t, dict(items)] for b, (t, items) in group.items()} for g, group in bins.items()}


def add_segments(
    bins: Bins,
    segments: Iterable[tuple[int, int, str, str]],
    spans: dict[str, tuple[int, int]],
    cands: dict[int, list[int]],
) -> None:
    """Add ``segments`` (in byte order, after every segment already in ``bins``) to their bins."""
    ranges = sorted(
        (span[0], span[1], group)
        for name, group in (("tools", GROUP_TOOLS), ("system", GROUP_SYSTEM), ("messages", GROUP_MESSAGES))
        if (span := spans.get(name)) is not None
    )
    ri, nr = 0, len(ranges)
    # Per group: the bin being filled and the next breakpoint that starts another.
    where: dict[int, tuple[list, int, int]] = {}  # type: ignore[type-arg]
    for start, end, category, item in segments:
        size = end - start
        if size <= 0:
            continue
        while ri < nr and ranges[ri][1] <= start:
            ri += 1
        group = ranges[ri][2] if ri < nr and ranges[ri][0] <= start else GROUP_TAIL
        state = where.get(group)
        if state is None or state[2] <= start:
            positions = cands.get(group, [])
            i = bisect.bisect_right(positions, start)
            first = positions[i - 1] if i else HEAD
            nxt = positions[i] if i < len(positions) else 1 << 62
            group_bins = bins.setdefault(group, {})
            slot = group_bins.get(first)
            if slot is None:
                slot = group_bins[first] = [0, {}]
            state = where[group] = (slot, first, nxt)
        slot = state[0]
        slot[0] += size
        items = slot[1]
        key = (category, item)
        items[key] = items.get(key, 0) + size


def ordered(bins: Bins) -> list[tuple[tuple[int, int], int, dict[Key, int]]]:
    """The bins in cache order: ((group, start), bytes, items)."""
    return [((g, b), slot[0], slot[1]) for g in sorted(bins) for b, slot in sorted(bins[g].items())]

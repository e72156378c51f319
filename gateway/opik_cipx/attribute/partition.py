"""The walker's raw regions -> the final regions and the bytes of every (category, item).

The walker records content regions (and unknown members, category None). Every
gap between them inside the walked structure is ``framing``/``structure``,
split at ``cuts`` (cache-group and breakpoint boundaries) so that no region
straddles one. A 1 MB body has about a thousand regions; one plain loop with a
handful of operations per region does it. (A version built from ``map`` /
``compress`` / ``sort`` ran no faster: the cost is in the tuples and dict
entries, which any version has to make.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import FRAMING, Region

RawRegion = tuple[int, int, "str | None", str]  # (start, end, category or None for unknown, item)
Key = tuple[str, str]

STRUCTURE: Key = (FRAMING, "structure")
PROMPT = "\x00prompt"  # placeholder item for system[2]; named once the call kind is known
# Region(*t) runs a Python-level __new__; tuple.__new__(Region, t) builds the same object twice as fast.
_new = tuple.__new__


@dataclass(slots=True)
class PartitionState:
    """Where :func:`partition_from` stood after some of the raw regions, to go on from there later."""

    out: int  # regions emitted by then (in that run)
    sizes: dict[Key, int]
    structure: int
    next_cut: int
    cursor: int
    passed: list[int]  # cuts[:next_cut]: a later run may go on only if its cuts start the same


def partition(raw: list[RawRegion], limit: int, cuts: list[int], prompt: Key) -> tuple[list[Region], dict[Key, int]]:
    """Final regions up to ``limit`` and bytes per (category, item), items in first-seen order.

    ``raw``: sorted, every end <= ``limit``. A region that overlaps the previous
    one is clipped. Regions with the placeholder item ``PROMPT`` become
    ``prompt`` (the system prompt, named once the call kind is known).
    """
    regions, sizes, _ = partition_from(raw, limit, cuts, prompt)
    return regions, sizes


def partition_from(
    raw: list[RawRegion],
    limit: int,
    cuts: list[int],
    prompt: Key,
    resume: PartitionState | None = None,
    note_after: int | None = None,
) -> tuple[list[Region], dict[Key, int], PartitionState | None]:
    """:func:`partition`, optionally going on from ``resume`` (the regions it covered are not
    emitted again) and noting the state once ``note_after`` raw regions are consumed."""
    regions: list[Region] = []
    append = regions.append
    noted: PartitionState | None = None
    cuts = [*cuts, max([limit, *cuts]) + 1]  # a sentinel no gap reaches: no bounds checks
    if resume is None:
        sizes: dict[Key, int] = {}
        structure = 0  # framing bytes, summed here and stored once
        next_cut = 0
        cursor = 0
    else:
        sizes = dict(resume.sizes)
        structure = resume.structure
        next_cut = resume.next_cut
        cursor = resume.cursor
    cut = cuts[next_cut]  # the first cut past the cursor, once a gap has moved it along
    for n, region in enumerate((*raw, (limit, limit, None, ""))):  # the sentinel closes the last gap
        if n == note_after:
            noted = PartitionState(len(regions), dict(sizes), structure, next_cut, cursor, cuts[:next_cut])
        start, end, category, item = region
        if start < cursor:  # never overlap, whatever a future wire format does
            start = cursor
            if start >= end:
                continue
            region = (start, end, category, item)
        if start > cursor:
            a = cursor
            if cut < start:  # rare: a cut behind the cursor, or the gap spans one
                while cut <= a:
                    next_cut += 1
                    cut = cuts[next_cut]
                while cut < start:
                    append(_new(Region, (a, cut, FRAMING, "structure")))
                    a = cut
                    next_cut += 1
                    cut = cuts[next_cut]
            append(_new(Region, (a, start, FRAMING, "structure")))
            if not structure:
                sizes.setdefault(STRUCTURE, 0)  # first seen here: keeps the items' order
            structure += start - cursor
        if category is not None:
            if item == PROMPT:
                category, item = prompt
                region = (start, end, category, item)
            append(_new(Region, region))
            key = (category, item)
            sizes[key] = sizes.get(key, 0) + (end - start)
        cursor = end
    if structure:
        sizes[STRUCTURE] += structure
    return regions, sizes, noted

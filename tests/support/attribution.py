"""Checks and stand-ins shared by the attribution tests."""

from __future__ import annotations

from dataclasses import dataclass

from opik_cipx.attribute import Attribution


def where(attr: Attribution, body: bytes, marker: str) -> tuple[str, str]:
    """Category and item of the region holding every byte of the (first) marker occurrence."""
    needle = marker.encode("utf-8")
    start = body.find(needle)
    assert start != -1, f"{marker} not in body"
    end = start + len(needle)
    hits = {(r.category, r.item) for r in attr.segments() if r.start < end and r.end > start}
    assert len(hits) == 1, f"{marker} split over {hits}"
    return hits.pop()


def assert_partition(attr: Attribution, body: bytes) -> None:
    """Regions sorted, disjoint, inside the body; with the gaps they cover every byte once."""
    assert attr.body_bytes == len(body)
    cursor = 0
    covered = 0
    for region in attr.regions:
        assert 0 <= region.start < region.end <= len(body), region
        assert region.start >= cursor, f"overlap at {region}"
        cursor = region.end
        covered += region.end - region.start
    assert covered + attr.unattributed_bytes == len(body)
    segments = list(attr.segments())
    assert sum(s.size for s in segments) == len(body)
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))
    assert sum(t.bytes for t in attr.items) == len(body)
    assert sum(c.bytes for c in attr.categories.values()) == len(body)


@dataclass(frozen=True, slots=True)
class FakeRates:
    """Stands in for a price table's rates (the attributes ``allocate`` reads), with round numbers."""

    input: float = 5e-6
    cache_write_5m: float = 6.25e-6
    cache_write_1h: float = 10e-6
    cache_read: float = 0.5e-6
    output: float = 25e-6
    web_search_per_request: float = 0.01
    key: str = "fake"
    effective_date: str = "2026-01-01"
    multiplier: float = 1.0
    long_context: bool = False

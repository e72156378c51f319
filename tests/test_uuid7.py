from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.ship.uuid7 import is_uuid7, timestamp_ms, uuid7, uuid7_at


@given(st.integers(min_value=0, max_value=2**48 - 1), st.text(max_size=40))
def test_version_variant_and_timestamp_bits(ms: int, key: str) -> None:
    value = uuid7(ms, key)
    parsed = uuid.UUID(value)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert timestamp_ms(value) == ms
    assert is_uuid7(value)


def test_same_key_and_time_give_the_same_id_and_other_keys_differ() -> None:
    assert uuid7(1_700_000_000_123, "llm:abc") == uuid7(1_700_000_000_123, "llm:abc")
    assert uuid7(1_700_000_000_123, "llm:abc") != uuid7(1_700_000_000_123, "llm:abd")
    assert uuid7(1_700_000_000_123, "llm:abc") != uuid7(1_700_000_000_124, "llm:abc")


def test_ids_sort_by_start_time() -> None:
    ids = [uuid7_at(1_700_000_000.0 + i / 1000, f"k{9 - i}") for i in range(10)]
    assert ids == sorted(ids)


def test_seconds_are_truncated_to_milliseconds_and_out_of_range_clamped() -> None:
    assert timestamp_ms(uuid7_at(1_700_000_000.9999, "k")) == 1_700_000_000_999
    assert timestamp_ms(uuid7(-5, "k")) == 0
    assert timestamp_ms(uuid7(2**60, "k")) == 2**48 - 1


def test_non_v7_and_garbage_are_not_uuid7() -> None:
    assert not is_uuid7(str(uuid.uuid4()))
    assert not is_uuid7("not-a-uuid")

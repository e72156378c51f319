"""Deterministic UUIDv7: the real start time in the timestamp bits, the rest from a stable key.

Opik filters traces and spans by id range, so the 48 timestamp bits must carry
the moment the thing started. The 74 "random" bits come from a SHA-256 of a
stable key (the exchange id, a tool_use id, a session id), so deriving the same
span twice gives the same id and a re-send is an upsert, never a duplicate.
"""

from __future__ import annotations

import hashlib
import uuid

_MAX_MS = (1 << 48) - 1


def uuid7(ms: int, key: str) -> str:
    """The UUIDv7 for ``key`` started at epoch milliseconds ``ms`` (clamped to 48 bits)."""
    ms = min(max(int(ms), 0), _MAX_MS)
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:10], "big")  # 80 bits
    rand_a = digest >> 68  # top 12 bits
    rand_b = digest & ((1 << 62) - 1)  # low 62 bits
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def uuid7_at(seconds: float, key: str) -> str:
    """:func:`uuid7` from epoch seconds, as Exchange timestamps are kept."""
    return uuid7(int(seconds * 1000), key)


def timestamp_ms(value: str) -> int:
    """The millisecond timestamp inside a UUIDv7 string."""
    return uuid.UUID(value).int >> 80


def is_uuid7(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return parsed.version == 7 and parsed.variant == uuid.RFC_4122

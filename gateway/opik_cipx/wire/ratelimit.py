"""Claude plan windows from the ``anthropic-ratelimit-unified-*`` response headers.

Subscription logins get these on every answer: an overall status (``allowed``,
``allowed_warning``, ``rejected``), the utilization (0-1) and reset time (Unix seconds) of the
5-hour and 7-day windows, which of them currently binds (``representative-claim``), and the
overage state. Absent headers mean no plan windows (an API key), never zero use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFIX = "anthropic-ratelimit-unified-"
WINDOWS = {"5h": "five_hour", "7d": "seven_day"}


def plan_windows(headers: Mapping[str, str]) -> dict[str, Any] | None:
    """The windows a response announced, or None when it carried none. Header names lower-case."""
    found = {k[len(PREFIX):]: v.strip() for k, v in headers.items() if k.lower().startswith(PREFIX)}
    if not found:
        return None
    out: dict[str, Any] = {"status": found.get("status")}
    for short, name in WINDOWS.items():
        utilization = _float(found.get(f"{short}-utilization"))
        if utilization is None and f"{short}-status" not in found:
            continue
        out[name] = {"utilization": utilization, "reset": _int(found.get(f"{short}-reset")),
                     "status": found.get(f"{short}-status")}
    claim = found.get("representative-claim")
    if claim:
        out["representative_claim"] = claim
    if "overage-status" in found:
        out["overage"] = {"status": found.get("overage-status"), "reset": _int(found.get("overage-reset")),
                          "disabled_reason": found.get("overage-disabled-reason")}
    if "fallback-percentage" in found:
        out["fallback_percentage"] = _float(found.get("fallback-percentage"))
    return out


def is_limited(windows: Mapping[str, Any] | None, threshold: float = 0.9) -> bool:
    """A window at or past ``threshold``, or a status other than plainly allowed."""
    if not windows:
        return False
    if windows.get("status") not in (None, "allowed"):
        return True
    return any(
        isinstance(w, Mapping) and isinstance(w.get("utilization"), float) and w["utilization"] >= threshold
        for w in (windows.get(name) for name in WINDOWS.values())
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None

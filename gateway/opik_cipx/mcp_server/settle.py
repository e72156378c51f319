"""Wait, briefly, for the gateway's capture to catch up before reading the spool.

Claude Code runs an MCP tool as soon as the answer asking for it has streamed in; the
gateway stores that call a moment later (capture runs off the relay's path). Without a
wait, "this session so far" would miss the very call that asked. The gateway's
``/_cipx/status`` says how many finished calls wait for capture (``capture.pending``);
the answer is read once that is 0 and the count of submitted calls has stopped moving.
Bounded: a gateway that is down, wedged or busy never holds the tool for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Fetch = Callable[[], dict[str, Any] | None]

SETTLE_TIMEOUT = 5.0
POLL_INTERVAL = 0.1


def settle(fetch: Fetch, *, timeout: float = SETTLE_TIMEOUT, interval: float = POLL_INTERVAL,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """True once capture is idle (or the gateway has no capture to wait for); False when the
    gateway does not answer or is still capturing at ``timeout``: the caller says so."""
    deadline = clock() + timeout
    previous: int | None = None
    while True:
        doc = fetch()
        if doc is None:
            return False
        capture = doc.get("capture")
        if not isinstance(capture, dict):
            return True  # capture off: nothing will land in the spool to wait for
        submitted = capture.get("submitted")
        if capture.get("pending") == 0 and submitted is not None and submitted == previous:
            return True
        previous = submitted if capture.get("pending") == 0 else None
        if clock() >= deadline:
            return False
        sleep(interval)

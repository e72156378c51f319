"""Is the upstream answering? Counted from the calls themselves, as they finish.

Every relayed call ends in a Recorder; when the gateway had to answer it itself (502: no
connection, 504: no response head in time) the upstream is failing. Consecutive failures
and the last error are what ``status`` shows and what makes it exit non-zero: with the
upstream unreachable every Claude Code call fails, and the user must hear it from us, not
from minutes of client retries. The log gets one line when it starts failing, one per
minute while it goes on, and one when it recovers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..model import Outcome

log = logging.getLogger("opik_cipx.upstream")

LOG_EVERY_SECONDS = 60.0


class UpstreamHealth:
    """Fed by :meth:`observe` with each finished call (O(1), never raises)."""

    def __init__(self, upstream_url: str, *, clock: Any = time.time, log_every: float = LOG_EVERY_SECONDS) -> None:
        self.upstream_url = upstream_url
        self.clock = clock
        self.log_every = log_every
        self.consecutive_failures = 0
        self.failures_total = 0
        self.last_error: dict[str, Any] | None = None  # {"at", "message", "status"}
        self.last_ok_at: float | None = None
        self._logged_at: float | None = None
        self._unlogged = 0

    def observe(self, rec: Any) -> None:
        try:
            self._observe(rec)
        except Exception:  # bookkeeping must never touch the call
            log.debug("upstream health: could not read a finished call", exc_info=True)

    def _observe(self, rec: Any) -> None:
        now = self.clock()
        if rec.forced_outcome is Outcome.UNREACHABLE:
            self.consecutive_failures += 1
            self.failures_total += 1
            message = str(rec.error or "no answer")
            self.last_error = {"at": now, "message": message, "status": rec.gateway_status}
            self._unlogged += 1
            if self._logged_at is None or now - self._logged_at >= self.log_every:
                log.warning("upstream %s unreachable (%d call(s) failed since the last report): %s",
                            self.upstream_url, self._unlogged, message)
                self._logged_at, self._unlogged = now, 0
        elif rec.status is not None:
            # Any answer from the upstream, even a 4xx or 5xx, means it is reachable.
            if self.consecutive_failures:
                log.warning("upstream %s reachable again after %d failed call(s)",
                            self.upstream_url, self.consecutive_failures)
            self.consecutive_failures = 0
            self.last_ok_at = now
            self._logged_at, self._unlogged = None, 0

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.upstream_url,
            "consecutive_failures": self.consecutive_failures,
            "failures_total": self.failures_total,
            "last_error": self.last_error,
            "last_ok_at": self.last_ok_at,
        }

    def problem(self) -> str | None:
        """One line for ``status`` while the upstream is failing, with what to do."""
        if not self.consecutive_failures or self.last_error is None:
            return None
        return (
            f"upstream {self.upstream_url} unreachable: {self.last_error['message']} "
            f"({self.consecutive_failures} call(s) in a row failed; Claude Code's calls fail until it answers). "
            "Check CIPX_UPSTREAM_URL and CIPX_UPSTREAM_PROXY, then run `opik-cipx doctor`"
        )

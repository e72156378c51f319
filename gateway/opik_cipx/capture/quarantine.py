"""A call the capture worker dies on is stored anyway: raw, unparsed, with the reason.

Bisection (:mod:`~opik_cipx.capture.sink`) narrows a batch that kills the worker
down to one call. That call is never parsed again: :func:`quarantined` keeps its
bytes exactly as they crossed the wire, marks it ``unparseable`` and names the
error, so it is visible in the spool and the viewer instead of silently held in
the journal (which would then never rewind).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..attribute.analysis import Captured
from ..model import Exchange, Outcome, classify
from ..proxy.recorder import Recorder
from ..store.spool import AsyncSpool
from ..wire.redact import redact_headers

log = logging.getLogger(__name__)

# Stores one call the store died on; returns what it stored.
Quarantine = Callable[[Recorder, str], Awaitable[Captured]]


def quarantined(rec: Recorder, error: str) -> Exchange:
    """The Exchange for a call capture could not survive. Pure, and parses nothing: whatever
    killed the worker is in these bytes, so only lengths, headers and timings are read."""
    t0 = rec.t_start

    def ms(t: float | None) -> float | None:
        return None if t is None else round((t - t0) * 1000.0, 3)

    response_headers = redact_headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in rec.response_headers)
    request_headers = redact_headers(rec.request_headers.items())
    raw = bytes(rec.response)
    return Exchange(
        id=rec.id,
        started_at=rec.wall_start,
        method=rec.method,
        path=rec.path,
        kind=classify(rec.method, rec.path),
        request_headers=request_headers,
        request_body=rec.body,
        status=rec.status,
        response_headers=response_headers,
        # As sent on the wire (still content-encoded, if it was): decoding is a step it may fail.
        response_body=raw,
        response_encoding=response_headers.get("content-encoding"),
        streamed=response_headers.get("content-type", "").strip().lower().startswith("text/event-stream"),
        ttfb_ms=ms(rec.t_head),
        duration_ms=ms(rec.t_end),
        # Headers only: the body may be what killed the worker.
        session_id=request_headers.get("x-claude-code-session-id"),
        agent_id=request_headers.get("x-claude-code-agent-id"),
        outcome=Outcome.UNPARSEABLE,
        error=f"quarantined: capture failed on this call ({error}); bodies stored raw, not decoded",
        request_bytes=len(rec.body),
        response_bytes=len(raw),
    )


class ReadBack(Protocol):
    def read_back(self, rec: Recorder) -> Recorder: ...


def into_spool(spool: AsyncSpool, journal: ReadBack | None) -> Quarantine:
    """A Quarantine that writes on this process's spool thread, not in the worker that died.

    A call the parent released (its bytes only in the journal) is read back first.
    """

    async def store(rec: Recorder, error: str) -> Captured:
        whole = rec
        if rec.released:
            if journal is None:
                raise ValueError(f"call {rec.id} holds no bytes and there is no journal to read")
            try:
                whole = await spool.run(lambda _sp: journal.read_back(rec))
            except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
                raise ValueError(f"call {rec.id} is no longer in the journal: {exc}") from exc
        ex = quarantined(whole, error)
        await spool.add(ex)
        log.error("capture: call %s quarantined as unparseable: %s", rec.id, error)
        # The after-commit stages get what the worker would send them: the call minus its bytes.
        return Captured(dataclasses.replace(ex, request_body=b"", response_body=b""))

    return store

"""How long a client connection may take, and how many there may be: pure rules, no sockets.

A client that opens a connection and sends nothing, or a request head a byte at a
time, or half a body and then stops, holds a file descriptor (and, mid-request, an
upstream connection) for as long as it likes. The relay asks :func:`overdue` about
each connection about once a second and ends those past their bound. Claude Code
keeps connections open between calls, so the idle bound is generous; the others
are far longer than any well-behaved client needs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    """What a client connection is doing, as far as its bounds are concerned."""

    NEW = "new"  # just connected: nothing read yet
    IDLE = "idle"  # between requests: nothing read of the next one yet
    HEAD = "head"  # reading a request head (request line and headers)
    BODY = "body"  # reading a request body, and the client is the one that is slow
    BUSY = "busy"  # a call is being answered, or we paused reading: never the client's fault
    ENDING = "ending"  # answered with an error, closing once the client has read it (or soon)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    head_timeout: float = 30.0  # from the first byte of a request to the end of its head
    body_timeout: float = 60.0  # longest wait for the next bytes of a request body
    idle_timeout: float = 600.0  # keep-alive: how long a connection may wait for its next request
    max_connections: int = 512  # client connections open at once (each may hold an upstream one too)
    sweep_every: float = 1.0  # how often connections are checked against the bounds
    # A connection this young that has sent nothing yet is not ended to make room: its request is
    # on its way (a real client writes at once), and a flood of new connections must not push out
    # the one real call among them. Past the cap with nothing else to end, the newcomer is refused.
    new_grace: float = 0.25


def overdue(phase: Phase, since: float, now: float, limits: ClientLimits) -> str | None:
    """Why a connection in ``phase`` since ``since`` must end at ``now``; None while it may go on."""
    bound = {Phase.NEW: limits.idle_timeout, Phase.IDLE: limits.idle_timeout, Phase.HEAD: limits.head_timeout,
             Phase.BODY: limits.body_timeout}.get(phase)
    if bound is None or now - since <= bound:
        return None
    return {
        Phase.NEW: f"idle for more than {bound:g}s",
        Phase.IDLE: f"idle for more than {bound:g}s",
        Phase.HEAD: f"request head not complete within {bound:g}s",
        Phase.BODY: f"no request body bytes for more than {bound:g}s",
    }[phase]


# Which connections may be ended to make room, most expendable first: one ending anyway, then
# a head still arriving (what a slowloris holds), then an idle one (a client's pool keeps those,
# and a new connection is idle until its first bytes: it should not be the first to go).
_EVICTABLE = {Phase.ENDING: 0, Phase.HEAD: 1, Phase.IDLE: 2, Phase.NEW: 2}


def to_evict(candidates: list[tuple[Phase, float]], now: float, limits: ClientLimits) -> int | None:
    """At the connection cap, which connection makes room for a new one: the index of one that
    is ending anyway, else the one longest sending a head, else the one longest idle (a new one
    only once past ``new_grace``); None when every connection is serving a call or just arrived,
    and the newcomer must be turned away instead."""
    best: int | None = None
    best_key = (0, 0.0)
    for i, (phase, since) in enumerate(candidates):
        rank = _EVICTABLE.get(phase)
        if phase is Phase.NEW and now - since < limits.new_grace:
            continue
        if rank is not None and (best is None or (rank, since) < best_key):
            best, best_key = i, (rank, since)
    return best

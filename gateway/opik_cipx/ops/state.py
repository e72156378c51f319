"""What the gateway's own routes may read of the running gateway: a small protocol, one AppKey.

The admin, metrics and viewer routes are handed the running gateway through
:data:`STATE_KEY` as a :class:`GatewayState`, so none of them imports the server
(which imports them) or reaches into its private parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from ..capture.sink import CaptureStats
from ..config import Settings
from ..pricing import PriceTable
from ..store.sessions import SessionStore
from ..store.spool import AsyncSpool
from .upstream_health import UpstreamHealth


@dataclass(frozen=True, slots=True)
class WorkerReport:
    pid: int | None
    restarts: int


@dataclass(frozen=True, slots=True)
class JournalReport:
    appended: int
    errors: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """The capture side of the gateway at one moment."""

    stats: CaptureStats
    pending: int  # finished calls waiting to be stored
    running: bool  # the task that hands calls to the store is alive
    worker: WorkerReport | None  # None when capture runs in-process
    journal: JournalReport | None


class GatewayState(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def port(self) -> int | None: ...

    @property
    def started_at(self) -> float | None: ...

    @property
    def spool(self) -> AsyncSpool | None: ...

    @property
    def prices(self) -> PriceTable: ...

    @property
    def pricing_error(self) -> str | None: ...

    @property
    def sessions(self) -> SessionStore: ...

    @property
    def upstream(self) -> UpstreamHealth: ...

    def capture_report(self) -> CaptureReport | None: ...

    def shipper_status(self) -> dict[str, Any] | None: ...

    def plan_windows(self) -> dict[str, Any] | None: ...


STATE_KEY: web.AppKey[GatewayState] = web.AppKey("gateway_state")


def state_of(request: web.Request) -> GatewayState:
    return request.app[STATE_KEY]

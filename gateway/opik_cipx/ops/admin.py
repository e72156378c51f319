"""The gateway's own HTTP routes, under ``/_cipx/`` on the same loopback listener.

* ``GET /_cipx/health`` -- cheap: pid, port, version. What ``ensure-running`` waits for.
* ``GET /_cipx/status`` -- everything ``opik-cipx status`` renders, as JSON.
* ``POST /_cipx/sessions`` -- the SessionStart hook's registration.

Nothing under the prefix is ever forwarded upstream. ``Host`` and ``Origin`` are
checked first for every route (``guard.py``); beyond that a browser page cannot
drive these routes: a registration must be ``application/json`` (a CORS
preflight that nobody answers) and requests carrying any ``Origin`` are refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from .. import __version__
from ..store.retention import footprint
from ..store.sessions import InvalidSession, SessionInfo
from ..store.spool import Spool
from .state import STATE_KEY, GatewayState

log = logging.getLogger(__name__)

PREFIX = "/_cipx"
SPOOL_CACHE_SECONDS = 5.0
MAX_REGISTRATION_BYTES = 256 * 1024


class SpoolFigures:
    """Spool counters scan every row; status is polled, so keep them a few seconds."""

    def __init__(self, ttl: float = SPOOL_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._at = 0.0
        self._value: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def get(self, gateway: GatewayState) -> dict[str, Any] | None:
        if gateway.spool is None:
            return None
        async with self._lock:
            if self._value is None or time.monotonic() - self._at > self.ttl:
                self._value = await gateway.spool.run(_spool_figures)
                self._at = time.monotonic()
            return self._value


def _spool_figures(spool: Spool) -> dict[str, Any]:
    counters = spool.counters()
    unattributed: int | None
    try:
        row = spool.conn.execute("SELECT total(unattributed_bytes) FROM attribution").fetchone()
        unattributed = int(row[0])
    except sqlite3.OperationalError:  # attribution not stored by this build
        unattributed = None
    return {
        "bytes": spool.size_bytes(),
        "calls": counters["calls"],
        "llm_calls": counters.get("kind.messages", 0),
        "stored_bytes": counters["stored_bytes"],
        "unattributed_bytes": unattributed,
        **footprint(spool.conn),  # oldest kept body, pruned calls, the last retention run
    }


def epoch(value: Any) -> float | None:
    """A moment as Unix seconds, whether stored as a number or as an ISO 8601 string.

    The shipper stamps its events with ISO strings (what Opik wants); the gateway's own
    clocks are numbers. Anything else is no moment at all.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _refuse_browsers(request: web.Request) -> web.Response | None:
    if request.headers.get("Origin"):
        return web.json_response({"error": "cross-origin requests are refused"}, status=403)
    return None


async def gateway_status(gateway: GatewayState, figures: SpoolFigures) -> dict[str, Any]:
    """The status document; every part degrades to None rather than failing the whole."""
    problems: list[str] = []
    capture: dict[str, Any] | None = None
    report = gateway.capture_report()
    if report is not None:
        st = report.stats
        capture = {
            "submitted": st.submitted,
            "captured": st.captured,
            "dropped": st.dropped,
            "errors": st.errors,
            "pending": report.pending,
            "held": st.held,  # the store failed on them; kept in the journal and retried
            "quarantined": st.quarantined,  # stored raw as unparseable: capture died on each
            "retried": st.retried,
            "last_error": st.last_error,
        }
        if st.errors:
            problems.append(f"{st.errors} capture stage error(s); last: {st.last_error}")
        if st.held:
            problems.append(f"{st.held} call(s) held: the store failed on them; retrying (the journal keeps them)")
        worker = report.worker
        capture["worker"] = None if worker is None else {"pid": worker.pid, "restarts": worker.restarts}
        if worker is not None and worker.restarts:
            problems.append(f"capture worker restarted {worker.restarts} time(s); see logs/capture-worker.log")
        journal = report.journal
        if journal is not None:
            capture["journal"] = {"appended": journal.appended, "errors": journal.errors,
                                  "last_error": journal.last_error}
            if journal.errors:
                problems.append(f"capture journal: {journal.errors} write error(s); last: {journal.last_error}")
    spool: dict[str, Any] | None
    try:
        spool = await figures.get(gateway)
    except Exception as exc:  # noqa: BLE001 - status must answer even with a broken spool
        spool = None
        problems.append(f"spool unreadable: {type(exc).__name__}: {exc}")
    shipper: dict[str, Any] | None = None
    try:
        shipper = gateway.shipper_status()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"shipper status failed: {type(exc).__name__}: {exc}")
    if shipper is not None:
        shipper = dict(shipper)
        last_error = shipper.get("last_error") or {}
        last_shipped = shipper.get("last_shipped") or {}
        error_at, shipped_at = epoch(last_error.get("at")), epoch(last_shipped.get("at"))
        # Only an error newer than the last success is a current problem: Opik came back since.
        if error_at is not None and (shipped_at is None or error_at > shipped_at):
            problems.append(f"Opik is failing, spans wait in the local outbox: {last_error.get('message')}")
    if gateway.pricing_error:
        problems.append(f"pricing overrides ignored: {gateway.pricing_error}")
    upstream_problem = gateway.upstream.problem()
    if upstream_problem:
        problems.insert(0, upstream_problem)  # the one that breaks every call comes first
    config_problems = gateway.settings.config_problems
    problems += [f"configuration: {problem}" for problem in config_problems]
    return {
        "version": __version__,
        "pid": os.getpid(),
        "port": gateway.port,
        "started_at": gateway.started_at,
        "uptime_s": round(time.time() - gateway.started_at, 3) if gateway.started_at else None,
        "upstream": gateway.settings.upstream_url,
        "upstream_health": gateway.upstream.to_json(),
        "capture": capture,
        "spool": spool,
        "shipper": shipper,
        "sessions": len(gateway.sessions),
        "plan": gateway.plan_windows(),
        "config_problems": [problem.to_json() for problem in config_problems],
        "problems": problems,
    }


def setup_admin(app: web.Application) -> None:
    """Add the admin routes (the app holds the gateway's state under ``STATE_KEY``); call
    before the proxy's catch-all so they match first."""
    figures = SpoolFigures()
    gateway = app[STATE_KEY]

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pid": os.getpid(), "port": gateway.port, "version": __version__,
                                  "upstream": gateway.settings.upstream_url})

    async def status(request: web.Request) -> web.Response:
        refused = _refuse_browsers(request)
        if refused is not None:
            return refused
        return web.json_response(await gateway_status(gateway, figures))

    async def sessions(request: web.Request) -> web.Response:
        refused = _refuse_browsers(request)
        if refused is not None:
            return refused
        if request.content_type != "application/json":
            return web.json_response({"error": "Content-Type must be application/json"}, status=415)
        raw = bytearray()
        while len(raw) <= MAX_REGISTRATION_BYTES:
            chunk = await request.content.read(MAX_REGISTRATION_BYTES + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
        if len(raw) > MAX_REGISTRATION_BYTES:
            return web.json_response({"error": "registration too large"}, status=413)
        try:
            info = SessionInfo.from_json(json.loads(raw))
        except (ValueError, InvalidSession) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        stored = await gateway.sessions.register(info)
        return web.json_response({"ok": True, "session": stored.to_json()}, status=201)

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"error": f"no admin route {request.method} {request.path}"}, status=404)

    app.router.add_get(f"{PREFIX}/health", health, allow_head=True)
    app.router.add_get(f"{PREFIX}/status", status, allow_head=False)
    app.router.add_post(f"{PREFIX}/sessions", sessions)
    # Anything else under the prefix is ours too: never let it reach the upstream.
    app.router.add_route("*", PREFIX + "/{tail:.*}", not_found)

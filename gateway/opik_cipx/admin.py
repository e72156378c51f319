"""The gateway's own HTTP routes, under ``/_cipx/`` on the same loopback listener.

* ``GET /_cipx/health`` -- cheap: pid, port, version. What ``ensure-running`` waits for.
* ``GET /_cipx/status`` -- everything ``opik-cipx status`` renders, as JSON.
* ``POST /_cipx/sessions`` -- the SessionStart hook's registration.

Nothing under the prefix is ever forwarded upstream. A browser page cannot
drive these routes: a registration must be ``application/json`` (a CORS
preflight that nobody answers) and requests carrying an ``Origin`` are refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import __version__
from .sessions import InvalidSession, SessionInfo
from .spool import Spool

if TYPE_CHECKING:
    from .server import Gateway

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

    async def get(self, gateway: Gateway) -> dict[str, Any] | None:
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
    }


def _refuse_browsers(request: web.Request) -> web.Response | None:
    if request.headers.get("Origin"):
        return web.json_response({"error": "cross-origin requests are refused"}, status=403)
    return None


async def gateway_status(gateway: Gateway, figures: SpoolFigures) -> dict[str, Any]:
    """The status document; every part degrades to None rather than failing the whole."""
    problems: list[str] = []
    capture: dict[str, Any] | None = None
    if gateway.capture is not None:
        st = gateway.capture.stats
        capture = {
            "submitted": st.submitted,
            "captured": st.captured,
            "dropped": st.dropped,
            "errors": st.errors,
            "pending": gateway.capture.pending,
            "last_error": st.last_error,
        }
        if st.errors:
            problems.append(f"{st.errors} capture stage error(s); last: {st.last_error}")
        worker = gateway._worker  # noqa: SLF001 - the gateway's own part, reported as is
        capture["worker"] = None if worker is None else {"pid": worker.pid, "restarts": worker.restarts}
        if worker is not None and worker.restarts:
            problems.append(f"capture worker restarted {worker.restarts} time(s); see logs/capture-worker.log")
        if gateway.journal is not None:
            capture["journal"] = {"appended": gateway.journal.appended, "errors": gateway.journal.errors,
                                  "last_error": gateway.journal.last_error}
            if gateway.journal.errors:
                problems.append(f"capture journal: {gateway.journal.errors} write error(s); last: "
                                f"{gateway.journal.last_error}")
    spool: dict[str, Any] | None
    try:
        spool = await figures.get(gateway)
    except Exception as exc:  # noqa: BLE001 - status must answer even with a broken spool
        spool = None
        problems.append(f"spool unreadable: {type(exc).__name__}: {exc}")
    shipper_obj = getattr(gateway, "shipper", None)
    shipper: dict[str, Any] | None = None
    if shipper_obj is not None:
        try:
            shipper = dict(shipper_obj.status())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"shipper status failed: {type(exc).__name__}: {exc}")
        else:
            last_error = shipper.get("last_error") or {}
            last_shipped = shipper.get("last_shipped") or {}
            if last_error.get("at") and (last_error["at"] > (last_shipped.get("at") or 0)):
                problems.append(f"Opik: {last_error.get('message')}")
    if gateway.pricing_error:
        problems.append(f"pricing overrides ignored: {gateway.pricing_error}")
    sessions = getattr(gateway, "sessions", None)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "port": gateway.port,
        "started_at": gateway.started_at,
        "uptime_s": round(time.time() - gateway.started_at, 3) if gateway.started_at else None,
        "upstream": gateway.settings.upstream_url,
        "capture": capture,
        "spool": spool,
        "shipper": shipper,
        "sessions": len(sessions) if sessions is not None else None,
        "problems": problems,
    }


def setup_admin(app: web.Application, gateway: Gateway) -> None:
    """Add the admin routes; call before the proxy's catch-all so they match first."""
    figures = SpoolFigures()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pid": os.getpid(), "port": gateway.port, "version": __version__})

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


# --- the client side: what `opik-cipx status` asks and prints ----------------------------------

# Exit codes of `opik-cipx status`, for scripts.
STATUS_OK = 0  # running, answering, no problems
STATUS_DOWN = 1  # no gateway holds the lock
STATUS_DEGRADED = 2  # running but wedged (not answering), unidentifiable, or reporting problems
STATUS_TIMEOUT = 2.0


def collect_status(settings: Any, timeout: float = STATUS_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """Probe the lock and pidfile, then ask the gateway itself; never trust just one of them."""
    from . import daemon

    live = daemon.probe(settings)
    doc: dict[str, Any] = {"state": str(live.state), "pid": live.pid, "port": live.port, "problems": []}
    if live.state is daemon.State.STOPPED:
        doc["stale_pidfile"] = live.stale_pidfile
        return STATUS_DOWN, doc
    if live.state is daemon.State.UNVERIFIED:
        doc["problems"].append(
            "the gateway lock is held but the pidfile names no live gateway (still starting, or wedged); "
            "see `opik-cipx logs`"
        )
        return STATUS_DEGRADED, doc
    if live.port is None:
        doc["problems"].append(f"pid {live.pid} holds the lock but has written no port file (starting, or failed to bind)")
        return STATUS_DEGRADED, doc
    remote = daemon.get_json(live.port, f"{PREFIX}/status", timeout)
    if remote is None:
        doc["problems"].append(
            f"pid {live.pid} is alive but port {live.port} did not answer within {timeout:g}s (wedged); "
            "`opik-cipx stop` then `opik-cipx ensure-running`"
        )
        return STATUS_DEGRADED, doc
    if remote.get("pid") != live.pid:
        doc["problems"].append(f"port {live.port} is answered by pid {remote.get('pid')}, not the gateway (pid {live.pid})")
        return STATUS_DEGRADED, doc
    doc.update({k: v for k, v in remote.items() if k != "problems"})
    doc["state"] = "running"
    doc["problems"] = list(remote.get("problems") or [])
    return (STATUS_DEGRADED if doc["problems"] else STATUS_OK), doc


def _ago(at: Any) -> str:
    if not isinstance(at, (int, float)) or not at:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{stamp} ({_duration(time.time() - at)} ago)"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render_status(code: int, doc: dict[str, Any]) -> str:
    pid, port = doc.get("pid"), doc.get("port")
    if code == STATUS_DOWN:
        lines = ["opik-cipx: not running"]
        if doc.get("stale_pidfile"):
            lines.append("  (a pidfile from a gateway that died was left behind; `opik-cipx ensure-running` replaces it)")
        return "\n".join(lines)
    if "uptime_s" not in doc:
        head = f"opik-cipx: NOT HEALTHY (pid {pid or '?'}, port {port or '?'})"
        return "\n".join([head, *(f"  problem: {p}" for p in doc.get("problems", []))])
    state = "running" if code == STATUS_OK else "running, DEGRADED"
    rows: list[tuple[str, str]] = [
        ("version", str(doc.get("version"))),
        ("upstream", str(doc.get("upstream"))),
    ]
    shipper = doc.get("shipper")
    capture = doc.get("capture") or {}
    spool = doc.get("spool") or {}
    if shipper is None:
        rows.append(("Opik", "shipper: not running (everything stays in the local spool)"))
        shipped = rejected = "-"
        ship_dropped = 0
    else:
        dest = shipper.get("destination")
        if dest:
            rows.append(
                ("Opik", f"{dest.get('base_url')} workspace={dest.get('workspace')} project={dest.get('project')} "
                         f"key={dest.get('api_key_masked') or '-'}")
            )
        else:
            rows.append(("Opik", "no destination configured (local spool only)"))
        rows.append(("enabled", "on by default" if shipper.get("enabled_default") else "off unless a session opts in"))
        rows.append(("queue", f"{shipper.get('queue_depth', '-')} spans, outbox {_size(shipper.get('outbox_bytes'))}"))
        last = shipper.get("last_shipped") or {}
        rows.append(("last shipped", f"{_ago(last.get('at'))} span {last.get('span_id')}" if last.get("at") else "never"))
        err = shipper.get("last_error") or {}
        rows.append(("last Opik error", f"{_ago(err.get('at'))}: {err.get('message')}" if err.get("at") else "none"))
        rows.append(("content", "captured" if shipper.get("capture_content", True) else "not shipped (privacy mode)"))
        if shipper.get("sample_rate") is not None:
            rows.append(("sample rate", str(shipper.get("sample_rate"))))
        rows.append(("telemetry", "on" if shipper.get("telemetry") == "on" else "off"))
        shipped, rejected = shipper.get("shipped", "-"), shipper.get("rejected", "-")
        ship_dropped = shipper.get("dropped") or 0
    rows.append(("spool", f"{_size(spool.get('bytes'))} on disk, {spool.get('calls', '-')} calls ({spool.get('llm_calls', '-')} LLM)"))
    unattributed = spool.get("unattributed_bytes")
    rows.append(
        (
            "counters",
            f"captured {capture.get('captured', '-')}, shipped {shipped}, "
            f"dropped {int(capture.get('dropped') or 0) + int(ship_dropped)}, rejected {rejected}, "
            f"unattributed {'-' if unattributed is None else _size(unattributed)}",
        )
    )
    rows.append(("sessions", f"{doc.get('sessions', '-')} registered"))
    width = max(len(k) for k, _ in rows)
    lines = [f"opik-cipx: {state} (pid {pid}, port {port}, up {_duration(doc.get('uptime_s') or 0)})"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"  problem: {p}" for p in doc.get("problems", [])]
    return "\n".join(lines)

"""``opik-cipx status``: ask the lock, the pidfile and the gateway itself, then say what is wrong.

The gateway's side of it (the ``/_cipx/status`` document) is :mod:`opik_cipx.ops.admin`.
"""

from __future__ import annotations

import time
from typing import Any

from . import daemon
from .admin import PREFIX, epoch

# Exit codes of `opik-cipx status`, for scripts.
STATUS_OK = 0  # running, answering, no problems
STATUS_DOWN = 1  # no gateway holds the lock
STATUS_DEGRADED = 2  # running but wedged (not answering), unidentifiable, or reporting problems
STATUS_TIMEOUT = 2.0


def collect_status(settings: Any, timeout: float = STATUS_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """Probe the lock and pidfile, then ask the gateway itself; never trust just one of them.

    Settings this command could not use are problems too (the gateway, started with the same
    configuration, set the same values aside), reported once.
    """
    code, doc = _collect(settings, timeout)
    doc["retention"] = {"days": settings.retention_days, "max_mb": settings.spool_max_mb}
    if code == STATUS_DOWN:  # the gateway cannot say: read what the spool file holds
        from ..store.retention import footprint_file

        doc["spool"] = footprint_file(settings.spool_path)
    own = [f"configuration: {problem}" for problem in settings.config_problems]
    doc["problems"] = [*doc["problems"], *(p for p in own if p not in doc["problems"])]
    if own and code == STATUS_OK:
        code = STATUS_DEGRADED
    return code, doc


def _collect(settings: Any, timeout: float) -> tuple[int, dict[str, Any]]:
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
        doc["problems"].append(
            f"pid {live.pid} holds the lock but has written no port file (starting, or failed to bind)"
        )
        return STATUS_DEGRADED, doc
    remote = daemon.get_json(live.port, f"{PREFIX}/status", timeout)
    if remote is None:
        doc["problems"].append(
            f"pid {live.pid} is alive but port {live.port} did not answer within {timeout:g}s (wedged); "
            "`opik-cipx stop` then `opik-cipx ensure-running`"
        )
        return STATUS_DEGRADED, doc
    if remote.get("pid") != live.pid:
        doc["problems"].append(
            f"port {live.port} is answered by pid {remote.get('pid')}, not the gateway (pid {live.pid})"
        )
        return STATUS_DEGRADED, doc
    doc.update({k: v for k, v in remote.items() if k != "problems"})
    doc["state"] = "running"
    doc["problems"] = list(remote.get("problems") or [])
    return (STATUS_DEGRADED if doc["problems"] else STATUS_OK), doc


def _ago(value: Any) -> str:
    at = epoch(value)
    if at is None:
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


def _upstream(doc: dict[str, Any]) -> str:
    health = doc.get("upstream_health") or {}
    url = str(doc.get("upstream"))
    failing = health.get("consecutive_failures") or 0
    err = health.get("last_error") or {}
    if failing:
        return f"{url}  UNREACHABLE: {failing} call(s) in a row, last {_ago(err.get('at'))}: {err.get('message')}"
    if health.get("last_ok_at"):
        return f"{url}  (last answered {_ago(health['last_ok_at'])})"
    return f"{url}  (no call relayed yet)"


def _retention(policy: dict[str, Any], spool: dict[str, Any]) -> str:
    days, cap = policy.get("days"), policy.get("max_mb")
    rule = f"bodies kept {days} days" if days else "bodies kept forever"
    if cap:
        rule += f", spool capped at {cap} MB"
    oldest = spool.get("oldest_body_at")
    parts = [rule, f"oldest kept body {_ago(oldest) if oldest else '-'}"]
    if spool.get("pruned_calls"):
        parts.append(f"{spool['pruned_calls']} calls pruned (totals kept)")
    last = spool.get("last_prune") or {}
    if last.get("over_cap"):
        parts.append(f"OVER THE CAP with nothing left to prune ({last.get('kept_unshipped', 0)} calls wait to ship "
                     "to Opik; every call keeps its totals)")
    return "; ".join(parts)


def render_status(code: int, doc: dict[str, Any]) -> str:
    pid, port = doc.get("pid"), doc.get("port")
    if code == STATUS_DOWN:
        lines = ["opik-cipx: not running"]
        if doc.get("stale_pidfile"):
            lines.append(
                "  (a pidfile from a gateway that died was left behind; `opik-cipx ensure-running` replaces it)"
            )
        if doc.get("spool"):
            lines.append(f"  spool {_size(doc['spool'].get('bytes'))} on disk; "
                         f"{_retention(doc.get('retention') or {}, doc['spool'])}")
        lines += [f"  problem: {p}" for p in doc.get("problems", [])]
        return "\n".join(lines)
    if "uptime_s" not in doc:
        head = f"opik-cipx: NOT HEALTHY (pid {pid or '?'}, port {port or '?'})"
        return "\n".join([head, *(f"  problem: {p}" for p in doc.get("problems", []))])
    state = "running" if code == STATUS_OK else "running, DEGRADED"
    rows: list[tuple[str, str]] = [
        ("version", str(doc.get("version"))),
        ("upstream", _upstream(doc)),
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
        shipped_at = f"{_ago(last.get('at'))} span {last.get('span_id')}" if last.get("at") else "never"
        rows.append(("last shipped", shipped_at))
        err = shipper.get("last_error") or {}
        rows.append(("last Opik error", f"{_ago(err.get('at'))}: {err.get('message')}" if err.get("at") else "none"))
        rows.append(("content", "captured" if shipper.get("capture_content", True) else "not shipped (privacy mode)"))
        if shipper.get("sample_rate") is not None:
            rows.append(("sample rate", str(shipper.get("sample_rate"))))
        rows.append(("telemetry", "on" if shipper.get("telemetry") == "on" else "off"))
        shipped, rejected = shipper.get("shipped", "-"), shipper.get("rejected", "-")
        ship_dropped = shipper.get("dropped") or 0
    calls = f"{spool.get('calls', '-')} calls ({spool.get('llm_calls', '-')} LLM)"
    rows.append(("spool", f"{_size(spool.get('bytes'))} on disk, {calls}"))
    rows.append(("retention", _retention(doc.get("retention") or {}, spool)))
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
    plan = doc.get("plan") or {}
    windows = [f"{label} {100 * w['utilization']:.0f}%" for label, key in (("5h", "five_hour"), ("7d", "seven_day"))
               if isinstance(w := plan.get(key), dict) and isinstance(w.get("utilization"), (int, float))]
    if windows:
        rows.append(("plan", f"{', '.join(windows)} used, status {plan.get('status') or '-'}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"opik-cipx: {state} (pid {pid}, port {port}, up {_duration(doc.get('uptime_s') or 0)})"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"  problem: {p}" for p in doc.get("problems", [])]
    return "\n".join(lines)

"""``opik-cipx doctor``: every reason calls are or are not captured, each with its fix."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_PORT, Settings
from .launcher import HOOKS, is_managed, mentions_our_script
from .settings_json import PLUGIN_ID, ProvisionError, Targets, base_url, load_settings

MANAGED_SETTINGS = (Path("/etc/claude-code/managed-settings.json"), Path("/etc/claude-code/managed-settings.d"))
_PURGE = "opik-cipx purge (drops the local spool)"


@dataclass
class Check:
    """One doctor finding; ``fix`` says what to run or change when it is not ok."""

    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _managed_settings(paths: tuple[Path, ...]) -> list[tuple[Path, dict[str, Any]]]:
    found: list[tuple[Path, dict[str, Any]]] = []
    for path in paths:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                found.append((file, data))
    return found


def doctor(
    settings: Settings,
    *,
    home: Path | None = None,
    environ: dict[str, str] | None = None,
    managed: tuple[Path, ...] = MANAGED_SETTINGS,
) -> list[Check]:
    """Every check that explains why calls are or are not captured, each with its fix."""
    from ..ops import status

    env = dict(os.environ if environ is None else environ)
    targets = Targets.of(settings, home)
    checks = [_config_check(settings)]
    code, doc = status.collect_status(settings)
    down = code == status.STATUS_DOWN
    checks += _gateway_checks(settings, ok=code == status.STATUS_OK, down=down, doc=doc)
    checks.append(_upstream_check(settings))
    checks.append(_spool_check(settings))
    checks.append(_opik_check(None if down else doc.get("shipper"), down=down))

    data: dict[str, Any] = {}
    try:
        data, _ = load_settings(targets.settings_path)
    except ProvisionError as exc:
        checks.append(Check("settings", "fail", str(exc), f"fix the JSON in {targets.settings_path}"))
    managed_docs = _managed_settings(managed)
    checks.append(_hooks_check(targets, data, [d for _, d in managed_docs]))
    # The running gateway's port is the truth; the configured one when it is down.
    want = f"http://127.0.0.1:{doc['port']}" if not down and doc.get("port") else base_url(settings)
    checks.append(_base_url_check(want, [*managed_docs, (targets.settings_path, data)], env))
    return checks


def _config_check(settings: Settings) -> Check:
    from ..pricing import PriceTable, PricingFileError

    problems = settings.config_problems
    if problems:
        local_only = any(p.shipping for p in problems)
        detail = "; ".join(map(str, problems))
        if local_only:
            detail += " (the gateway still relays every call and keeps it in the local spool)"
        return Check("config", "fail", detail, "correct or remove the setting named above, then `opik-cipx restart`")
    try:
        PriceTable.load(settings.pricing_file)
    except PricingFileError as exc:
        return Check("config", "warn", f"pricing overrides ignored: {exc}", f"fix or remove {settings.pricing_file}")
    return Check("config", "ok", f"settings valid; state dir {settings.home}")


def _gateway_checks(settings: Settings, *, ok: bool, down: bool, doc: dict[str, Any]) -> list[Check]:
    if ok:
        return [Check("gateway", "ok", f"running, pid {doc.get('pid')}, port {doc.get('port')}")]
    if not down:
        problems = "; ".join(doc.get("problems") or ["degraded"])
        return [Check("gateway", "fail", problems, "opik-cipx stop && opik-cipx ensure-running; see opik-cipx logs")]
    checks = [
        Check("gateway", "fail", "not running", "opik-cipx ensure-running (the plugin's SessionStart hook does this)")
    ]
    port = settings.port or DEFAULT_PORT
    if not _port_free(port):
        taken = f"127.0.0.1:{port} is taken by another program"
        checks.append(Check("port", "fail", taken, "stop it, or pick another port with CIPX_PORT"))
    else:
        checks.append(Check("port", "ok", f"127.0.0.1:{port} is free to bind"))
    return checks


def _upstream_check(settings: Settings) -> Check:
    from ..ops.reach import reach_upstream

    reach = reach_upstream(settings.upstream_url, settings.upstream_proxy)
    return Check("upstream", "ok" if reach.ok else "fail", reach.detail, reach.fix)


def _opik_check(shipper: dict[str, Any] | None, *, down: bool) -> Check:
    if down:
        return Check("opik", "warn", "unknown while the gateway is down", "opik-cipx ensure-running")
    if shipper is None:
        return Check("opik", "warn", "shipper not running: spans stay in the local spool")
    if not shipper.get("destination"):
        return Check(
            "opik",
            "warn",
            "no Opik destination configured: spans stay in the local spool",
            "set OPIK_CIPX_BASE_URL / OPIK_CIPX_API_KEY / OPIK_CIPX_WORKSPACE, or run `opik configure`",
        )
    from ..ops.admin import epoch

    err = shipper.get("last_error") or {}
    error_at, shipped_at = epoch(err.get("at")), epoch((shipper.get("last_shipped") or {}).get("at"))
    if error_at is not None and (shipped_at is None or error_at > shipped_at):
        failed = f"last attempt failed: {err.get('message')}"
        return Check("opik", "fail", failed, "check the Opik URL, API key and workspace")
    return Check("opik", "ok", f"shipping to {shipper['destination'].get('base_url')}")


def _hooks_check(targets: Targets, data: dict[str, Any], managed_docs: list[dict[str, Any]]) -> Check:
    plugin_on = any(
        d["enabledPlugins"].get(PLUGIN_ID) for d in [data, *managed_docs] if isinstance(d.get("enabledPlugins"), dict)
    )
    listed = data.get("hooks")
    hooks: dict[str, Any] = listed if isinstance(listed, dict) else {}
    wired = all(
        any(
            isinstance(h, dict) and mentions_our_script(h.get("command"))
            for e in (hooks.get(spec.event) or [])
            if isinstance(e, dict)
            for h in (e.get("hooks") or [])
        )
        for spec in HOOKS
    )
    scripts_ok = all(is_managed(targets.hooks_dir / spec.script) for spec in HOOKS)
    if plugin_on:
        return Check("hooks", "ok", f"plugin {PLUGIN_ID} is enabled")
    if wired and scripts_ok:
        wired_to = f"hooks in {targets.settings_path} run the managed scripts in {targets.hooks_dir}"
        return Check("hooks", "ok", wired_to)
    if wired:
        missing = "settings.json names hook scripts that are missing or not ours"
        return Check("hooks", "fail", missing, "opik-cipx setup")
    return Check(
        "hooks",
        "fail",
        "neither the plugin nor setup's hooks are configured: nothing restarts the gateway",
        f"claude plugin install {PLUGIN_ID}, or opik-cipx setup --apply",
    )


def _base_url_check(want: str, docs: list[tuple[Path, dict[str, Any]]], env: dict[str, str]) -> Check:
    """``docs``: managed settings first, then the user's settings.json; the first URL found wins."""
    sources: list[tuple[str, str]] = []
    for path, d in docs:
        value = (d.get("env") or {}).get("ANTHROPIC_BASE_URL") if isinstance(d.get("env"), dict) else None
        if value:
            sources.append((str(path), value))
    if env.get("ANTHROPIC_BASE_URL"):
        sources.append(("the environment", env["ANTHROPIC_BASE_URL"]))
    if not sources:
        return Check(
            "base-url",
            "fail",
            "Claude Code talks to the API directly: ANTHROPIC_BASE_URL is not set",
            "opik-cipx setup --apply, or set env.ANTHROPIC_BASE_URL in managed settings",
        )
    where, value = sources[0]  # managed settings win over user settings, which win over the shell
    if value.rstrip("/") == want:
        return Check("base-url", "ok", f"ANTHROPIC_BASE_URL={value} (from {where})")
    wrong = f"ANTHROPIC_BASE_URL={value} (from {where}) is not the gateway ({want})"
    return Check("base-url", "fail", wrong, f"set it to {want}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _spool_check(settings: Settings) -> Check:
    import sqlite3

    path = settings.spool_path
    if not path.exists():
        return Check("spool", "ok", f"{path} not created yet (the gateway creates it)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if not os.access(path.parent, os.W_OK) or not os.access(path, os.R_OK):
            # A permission problem: the data is fine, and deleting it would be the wrong fix.
            return Check("spool", "fail", f"{path}: {exc}",
                         f"make {path.parent} and its files readable and writable by you (owner and mode)")
        return Check("spool", "fail", f"{path}: {exc}", _PURGE)
    if not os.access(path.parent, os.W_OK):
        return Check("spool", "fail", f"{path.parent} is not writable: the gateway cannot store calls",
                     f"make {path.parent} writable by you (owner and mode), or point CIPX_HOME elsewhere")
    if result != "ok":
        return Check("spool", "fail", f"{path}: integrity check says {result}", _PURGE)
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return Check("spool", "ok", f"{path} ({size} bytes)")


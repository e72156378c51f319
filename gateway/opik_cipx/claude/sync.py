"""``opik-cipx sync``: the one idempotent repair, safe to run any time (the SessionStart hook does).

Enabled, it makes three things true and says what it changed: Claude Code's
``ANTHROPIC_BASE_URL`` points at the gateway (hooks too, unless the plugin brings its own;
never fighting a base URL set by managed settings), the OS supervisor is installed and
running it, and a gateway answers. With ``CIPX_DISABLED=1`` it tears the wiring down instead:
the supervisor goes, the managed base URL is taken out so Claude Code talks to Anthropic
directly from its next start, and a running gateway is left alone so the sessions already
pointed at it finish normally.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..ops import daemon, supervisor
from .doctor import MANAGED_SETTINGS, _managed_settings
from .provision import base_url_undo_plan, default_binary, setup_plan, status_line_undo_plan
from .settings_json import PLUGIN_ID, ProvisionError, Targets, load_settings


@dataclass
class SyncReport:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.ok = False
        self.lines.append(line)


def gateway_command() -> list[str]:
    """How the supervisor should run this gateway: the installed binary, or this interpreter."""
    if getattr(sys, "frozen", False):
        binary = default_binary()
        return [str(binary or sys.executable)]
    return [sys.executable, "-m", "opik_cipx.cli"]


def _plugin_enabled(docs: list[dict[str, Any]]) -> bool:
    return any(isinstance(d.get("enabledPlugins"), dict) and d["enabledPlugins"].get(PLUGIN_ID) for d in docs)


def _managed_base_url(docs: list[dict[str, Any]]) -> str | None:
    for doc in docs:
        env = doc.get("env")
        if isinstance(env, dict) and env.get("ANTHROPIC_BASE_URL"):
            return str(env["ANTHROPIC_BASE_URL"])
    return None


def wants_status_line(managed_docs: list[dict[str, Any]], environ: dict[str, str] | None = None) -> bool:
    """Ours wraps the user's status line unless they opted out or managed settings set one
    (a platform team's status line is never fought over)."""
    env = os.environ if environ is None else environ
    if env.get("OPIK_CIPX_STATUSLINE", "").strip().lower() == "off":
        return False
    return not any(doc.get("statusLine") for doc in managed_docs)


def sync(
    settings: Settings,
    *,
    home: Path | None = None,
    managed: tuple[Path, ...] = MANAGED_SETTINGS,
    bring_up: bool = True,
    timeout: float = 10.0,
    supervise: Callable[[Settings, list[str]], supervisor.Outcome] = supervisor.install,
    unsupervise: Callable[[], supervisor.Outcome] = supervisor.remove,
) -> SyncReport:
    report = SyncReport()
    managed_docs = [d for _, d in _managed_settings(managed)]
    if settings.disabled:
        return _tear_down(settings, report, home=home, unsupervise=unsupervise)
    _wire(settings, report, home=home, managed_docs=managed_docs)
    outcome = supervise(settings, gateway_command())
    report.say(f"supervisor: {outcome.message}")
    if bring_up:
        try:
            live = daemon.ensure_running(settings, timeout=timeout)
        except daemon.DaemonError as exc:
            report.fail(f"gateway: not running: {exc}")
        else:
            report.say(f"gateway: running (pid {live.pid}, http://127.0.0.1:{live.port})")
    return report


def _wire(settings: Settings, report: SyncReport, *, home: Path | None, managed_docs: list[dict[str, Any]]) -> None:
    targets = Targets.of(settings, home)
    try:
        data, _ = load_settings(targets.settings_path)
    except ProvisionError as exc:
        report.fail(f"Claude Code settings: {exc}")
        return
    managed_url = _managed_base_url(managed_docs)
    plugin = _plugin_enabled([data, *managed_docs])
    if managed_url is not None:
        # The platform team's managed settings decide the base URL; hooks are still ours to add.
        report.say(f"Claude Code settings: ANTHROPIC_BASE_URL={managed_url} comes from managed settings (left as is)")
        if plugin:
            return
    wrap = wants_status_line(managed_docs)
    try:
        plan = setup_plan(settings, apply_settings=managed_url is None, home=home, hooks=not plugin,
                          status_line=wrap)
        done = plan.apply()
        if not wrap:
            done += status_line_undo_plan(settings, home=home).apply()
    except ProvisionError as exc:
        report.fail(f"Claude Code settings: {exc}")
        return
    if done:
        report.lines += [f"Claude Code settings: {line}" for line in done]
    elif managed_url is None:
        report.say(f"Claude Code settings: already point at the gateway ({targets.settings_path})")


def _tear_down(settings: Settings, report: SyncReport, *, home: Path | None,
               unsupervise: Callable[[], supervisor.Outcome]) -> SyncReport:
    report.say("CIPX_DISABLED is set: taking the gateway out of Claude Code's path")
    report.say(f"supervisor: {unsupervise().message}")
    try:
        done = base_url_undo_plan(settings, home=home).apply()
    except ProvisionError as exc:
        report.fail(f"Claude Code settings: {exc}")
    else:
        report.lines += [f"Claude Code settings: {line}" for line in done] or [
            "Claude Code settings: no ANTHROPIC_BASE_URL of ours to take out"]
    live = daemon.probe(settings)
    if live.state is daemon.State.RUNNING:
        report.say(f"gateway: pid {live.pid} keeps serving the sessions already pointed at it; "
                   "`opik-cipx stop` once they are done (new sessions go to Anthropic directly)")
    return report


def to_json(report: SyncReport) -> str:
    return json.dumps({"ok": report.ok, "lines": report.lines}, indent=2)

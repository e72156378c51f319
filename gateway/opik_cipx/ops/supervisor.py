"""The OS supervisor: a systemd user unit on Linux, a launchd agent on macOS.

With one installed the gateway comes back after a crash or a reboot without waiting for the
next SessionStart hook. The supervised gateway runs ``proxy --supervised`` in the foreground:
it waits for the gateway lock instead of failing when a daemon-started gateway holds it, so
both paths can coexist and hand over without a gap (pidfile and lock rules are unchanged).
Machines without a user manager (containers, CI, SSH sessions without lingering) keep the
double-fork daemon: the unit file is still written, ready for the next login, and ``sync``
says the supervisor is not active.

Rendering is pure; installing is writes plus ``systemctl --user`` / ``launchctl`` calls, each
bounded in time, each failure reported rather than raised.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings

UNIT_NAME = "opik-cipx.service"
AGENT_LABEL = "com.comet.opik-cipx"
COMMAND_TIMEOUT = 10.0
# Settings a supervised gateway must see as the shell that ran `sync` saw them. Secrets (API
# keys) are not copied into the unit: the gateway reads them from config.toml / ~/.opik.config.
PASSED_ENV = ("CIPX_HOME", "CIPX_PORT", "CIPX_UPSTREAM_URL", "CIPX_UPSTREAM_PROXY", "CIPX_CONFIG",
              "CIPX_PRICING_PATH", "OPIK_CIPX_BASE_URL", "OPIK_CIPX_WORKSPACE", "OPIK_CIPX_PROJECT",
              "OPIK_CONFIG_PATH", "SSL_CERT_FILE", "HTTPS_PROXY", "NO_PROXY")


@dataclass(frozen=True, slots=True)
class Supervisor:
    kind: str  # "systemd" | "launchd"
    path: Path  # the unit or plist file

    @classmethod
    def for_platform(cls, home: Path | None = None, platform: str = sys.platform) -> Supervisor | None:
        home = home or Path(os.path.expanduser("~"))
        if platform.startswith("linux"):
            config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
            return cls("systemd", config / "systemd" / "user" / UNIT_NAME)
        if platform == "darwin":
            return cls("launchd", home / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist")
        return None


def supervised_argv(binary: list[str]) -> list[str]:
    return [*binary, "proxy", "--supervised"]


def passed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: env[k] for k in PASSED_ENV if env.get(k)}


def render_unit(argv: list[str], env: dict[str, str]) -> str:
    """The systemd user unit: restarted on failure, not after a clean exit (CIPX_DISABLED, stop)."""
    lines = [
        "# Written by `opik-cipx sync`; removed by `opik-cipx uninstall` or CIPX_DISABLED=1 `opik-cipx sync`.",
        "[Unit]",
        "Description=opik-cipx gateway (captures and prices Claude Code's API calls)",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}",
        *(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in sorted(env.items())),
        "Restart=on-failure",
        "RestartSec=2",
        # Every file the gateway writes holds prompts: private to the user.
        "UMask=0077",
        # A stop drains in-flight streams first (CIPX_SHUTDOWN_GRACE, 10 s by default).
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def _systemd_quote(word: str) -> str:
    if word and all(c.isalnum() or c in "/._-=:@+," for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_plist(argv: list[str], env: dict[str, str], log: Path) -> bytes:
    """The launchd agent: kept alive unless it exits cleanly, started at login."""
    doc = {
        "Label": AGENT_LABEL,
        "ProgramArguments": argv,
        "EnvironmentVariables": env,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "Umask": 0o077,
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
        "ProcessType": "Background",
    }
    return plistlib.dumps(doc)


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: bool
    active: bool  # the OS supervisor now runs the gateway
    message: str


def _run(cmd: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def user_manager_running() -> bool:
    """A systemd user manager answers (not the case in most containers and bare SSH sessions)."""
    if shutil.which("systemctl") is None:
        return False
    try:
        done = subprocess.run(["systemctl", "--user", "is-system-running"], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    # "degraded" exits non-zero but the manager is there; "offline" or no bus means none.
    return done.stdout.strip() in ("running", "degraded", "starting", "initializing")


def install(settings: Settings, binary: list[str], sup: Supervisor | None = None) -> Outcome:
    sup = sup or Supervisor.for_platform()
    if sup is None:
        return Outcome(False, False, f"no OS supervisor on {sys.platform}; the hooks keep the gateway up")
    argv = supervised_argv(binary)
    env = passed_env()
    if sup.kind == "systemd":
        content = render_unit(argv, env).encode()
    else:
        content = render_plist(argv, env, settings.logs_dir / "launchd.log")
    changed = _write_if_changed(sup.path, content)
    if sup.kind == "systemd":
        if not user_manager_running():
            return Outcome(changed, False, f"{'wrote' if changed else 'kept'} {sup.path}; no systemd user manager "
                                           "is running, so the hooks keep the gateway up (the unit starts at the "
                                           "next login with a user manager: `systemctl --user enable opik-cipx`)")
        steps = [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", UNIT_NAME],
                 ["systemctl", "--user", "start", UNIT_NAME]]
        if changed:  # a new binary path or settings: the running unit must pick them up
            steps[-1] = ["systemctl", "--user", "try-restart", UNIT_NAME]
            steps.append(["systemctl", "--user", "start", UNIT_NAME])
    else:
        uid = os.getuid()
        steps = [["launchctl", "bootstrap", f"gui/{uid}", str(sup.path)]] if changed else []
        steps.append(["launchctl", "kickstart", f"gui/{uid}/{AGENT_LABEL}"])
    for cmd in steps:
        ok, out = _run(cmd)
        if not ok and not (cmd[1] == "bootstrap" and "already" in out.lower()):
            return Outcome(changed, False, f"{' '.join(cmd)} failed: {out or 'no output'}; the hooks keep the "
                                           "gateway up")
    return Outcome(changed, True, f"{sup.kind} runs the gateway ({sup.path})")


def remove(sup: Supervisor | None = None) -> Outcome:
    """Take the unit or agent out. The running gateway is left alone: sessions pointed at it
    keep working until it is stopped."""
    sup = sup or Supervisor.for_platform()
    if sup is None or not sup.path.exists():
        return Outcome(False, False, "no OS supervisor installed")
    if sup.kind == "systemd" and user_manager_running():
        _run(["systemctl", "--user", "disable", UNIT_NAME])
    elif sup.kind == "launchd":
        # bootout would stop the gateway now; the agent is only deregistered at the next login.
        _run(["launchctl", "disable", f"gui/{os.getuid()}/{AGENT_LABEL}"])
    sup.path.unlink()
    if sup.kind == "systemd" and user_manager_running():
        _run(["systemctl", "--user", "daemon-reload"])
    return Outcome(True, False, f"removed {sup.path}")


def is_installed(sup: Supervisor | None = None) -> bool:
    sup = sup or Supervisor.for_platform()
    return sup is not None and sup.path.exists()


def _write_if_changed(path: Path, content: bytes) -> bool:
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return True

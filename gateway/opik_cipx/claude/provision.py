"""``setup`` and ``uninstall`` as a plan of changes, then apply.

Building a :class:`Plan` reads files and nothing else, so a dry run is free and
is exactly what ``--apply`` would do. Three rules keep a user's Claude Code
configuration safe:

* Hook scripts we write start with :data:`MARKER` on their first line; uninstall
  removes only files that carry it, so hand-written hooks are never touched.
* ``settings.json`` is backed up before the first change. The merge adds only
  our hook entries and ``env.ANTHROPIC_BASE_URL``, keeps every other key and its
  order, and writes with the file's own indentation. Applying twice changes
  nothing the second time.
* Uninstall takes out exactly what setup added -- leaving ``ANTHROPIC_BASE_URL``
  pointing at a dead port would break Claude Code. When the file is still what
  setup wrote, the original bytes come back from the backup, byte for byte;
  when the user has edited it since, only our entries are removed.

The launcher (``plugin/cipx-launch`` in the repository, and the body of every
hook script setup writes) is rendered from :data:`LAUNCHER_BODY`, so the plugin
and the hand-provisioned hooks share one keep-alive fast path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_PORT, Settings

MARKER = "# opik-cipx managed hook -- written by `opik-cipx setup`, removed by `opik-cipx uninstall`"
PLUGIN_ID = "opik-cipx@opik-enterprise"
RECORD_NAME = "provision.json"
BACKUP_SUFFIX = ".opik-cipx.bak"
HOOK_TIMEOUT = 10


@dataclass(frozen=True)
class HookSpec:
    event: str  # Claude Code's hook event name
    cli_event: str  # `opik-cipx hook claude_code <cli_event>`
    matcher: str
    script: str  # file name under ~/.claude/hooks/


HOOKS: tuple[HookSpec, ...] = (
    HookSpec("SessionStart", "session-start", "startup|resume|clear|compact", "opik-cipx-session-start.sh"),
    HookSpec("PreToolUse", "pre-tool-use", "*", "opik-cipx-pre-tool-use.sh"),
)

INSTALL_HINT = (
    "opik-cipx: the opik-cipx binary was not found (looked in $CLAUDE_PLUGIN_ROOT/bin, PATH, "
    "~/.opik-cipx/bin, /usr/local/bin); this session is not being captured. Install it: "
    "curl -fsSL https://raw.githubusercontent.com/comet-ml/opik-cipx/main/install.sh | bash"
)

# POSIX sh. The keep-alive fast path decides liveness with builtins only (no fork): the
# pidfile's pid must still have the start ticks it had when the gateway wrote it, so a
# reused pid does not count. Everything else goes to the binary, which bounds itself.
LAUNCHER_BODY = r"""cipx_home="${CIPX_HOME:-$HOME/.opik-cipx}"

# Keep-alive fast path: alive when the port file exists and the pidfile's process is the one
# that wrote it (same start time in clock ticks; pid alone where /proc is missing).
cipx_alive() {
  [ -s "$cipx_home/port" ] && [ -r "$cipx_home/gateway.pid" ] || return 1
  read -r cipx_pid cipx_ticks cipx_rest < "$cipx_home/gateway.pid" || return 1
  [ -n "$cipx_pid" ] || return 1
  if [ -r "/proc/$cipx_pid/stat" ]; then
    read -r cipx_stat < "/proc/$cipx_pid/stat" || return 1
    set -- ${cipx_stat##*") "}
    [ "${20:-}" = "$cipx_ticks" ]
  else
    [ "$cipx_ticks" = "-" ] && kill -0 "$cipx_pid" 2>/dev/null
  fi
}

case "${1:-}:${2:-}:${3:-}" in
  hook:claude_code:pre-tool-use|hook:claude_code:user-prompt-submit)
    if cipx_alive; then cat >/dev/null 2>&1; exit 0; fi ;;
esac

cipx_find() {
  for cipx_c in "${OPIK_CIPX_BIN:-}" \
      "${CLAUDE_PLUGIN_ROOT:+$CLAUDE_PLUGIN_ROOT/bin/opik-cipx}" \
      "${CLAUDE_PLUGIN_ROOT:+$CLAUDE_PLUGIN_ROOT/bin/opik-cipx/opik-cipx}" \
      "$(command -v opik-cipx 2>/dev/null)" \
      "$HOME/.opik-cipx/bin/opik-cipx" \
      "$cipx_home/bin/opik-cipx" \
      /usr/local/bin/opik-cipx; do
    if [ -n "$cipx_c" ] && [ -f "$cipx_c" ] && [ -x "$cipx_c" ]; then
      printf '%s\n' "$cipx_c"
      return 0
    fi
  done
  return 1
}

if ! cipx_bin=$(cipx_find); then
  echo "__INSTALL_HINT__" >&2
  if [ "${1:-}" = hook ]; then cat >/dev/null 2>&1; fi
  exit 0
fi
if [ "${1:-}" = hook ]; then
  # A hook never fails the session: whatever the binary does, exit 0.
  "$cipx_bin" "$@" || :
  exit 0
fi
exec "$cipx_bin" "$@"
""".replace("__INSTALL_HINT__", INSTALL_HINT)


def render_launcher() -> str:
    """``plugin/cipx-launch``: the plugin's hooks and ``/opik-cipx:status`` go through it."""
    return (
        "#!/bin/sh\n"
        "# opik-cipx plugin launcher: finds the opik-cipx binary and runs it. Generated from\n"
        "# opik_cipx/provision.py (LAUNCHER_BODY); edit it there, tests compare the two.\n"
        + LAUNCHER_BODY
    )


def render_hook_script(spec: HookSpec, binary: Path | None) -> str:
    preset = f'OPIK_CIPX_BIN="${{OPIK_CIPX_BIN:-{binary}}}"\n' if binary is not None else ""
    return (
        f"{MARKER}\n"
        f"# Claude Code {spec.event} hook: runs `opik-cipx hook claude_code {spec.cli_event}` and always exits 0.\n"
        f"{preset}{LAUNCHER_BODY}"
    )


def is_managed(path: Path) -> bool:
    """True only for files whose first line is our marker."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(len(MARKER) + 4)
    except OSError:
        return False
    return first.rstrip(b"\r\n") == MARKER.encode()


# --- the plan -------------------------------------------------------------------------------------


@dataclass
class Change:
    action: str  # "write" | "remove" | "remove-tree" | "run"
    path: Path | None
    summary: str
    content: bytes | None = None
    mode: int = 0o644
    run: Callable[[], str | None] | None = field(default=None, repr=False)


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.changes:
            lines = ["nothing to change"]
        else:
            lines = [f"{n}. {c.summary}" for n, c in enumerate(self.changes, 1)]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def apply(self) -> list[str]:
        """Carry out every change in order; returns what each one reported."""
        done: list[str] = []
        for change in self.changes:
            if change.action == "write":
                assert change.path is not None and change.content is not None
                _write_atomic(change.path, change.content, change.mode)
            elif change.action == "remove":
                assert change.path is not None
                try:
                    change.path.unlink()
                except FileNotFoundError:
                    pass
            elif change.action == "remove-tree":
                assert change.path is not None
                shutil.rmtree(change.path, ignore_errors=True)
            elif change.action == "run":
                assert change.run is not None
                result = change.run()
                if result:
                    done.append(result)
                    continue
            done.append(change.summary)
        return done


class ProvisionError(RuntimeError):
    pass


@dataclass(frozen=True)
class Targets:
    claude_dir: Path
    settings_path: Path
    hooks_dir: Path
    record_path: Path

    @classmethod
    def of(cls, settings: Settings, home: Path | None = None) -> Targets:
        claude = (home or Path(os.path.expanduser("~"))) / ".claude"
        return cls(claude, claude / "settings.json", claude / "hooks", settings.home / RECORD_NAME)

    @property
    def backup_path(self) -> Path:
        return self.settings_path.with_name(self.settings_path.name + BACKUP_SUFFIX)


def default_binary() -> Path | None:
    """The binary the hook scripts should prefer: the path the user ran, else the one on PATH.

    A frozen binary's ``sys.executable`` is its versioned bundle
    (``.opik-cipx-releases/<ver>-<stamp>/opik-cipx``); install.sh swaps the stable
    ``opik-cipx`` symlink on upgrade, so hooks must name the symlink, not the bundle.
    """
    if getattr(sys, "frozen", False):
        invoked = Path(sys.argv[0])
        if invoked.name == "opik-cipx" and (invoked.is_absolute() or "/" in sys.argv[0]) and invoked.exists():
            return invoked.absolute()
        found = shutil.which("opik-cipx")
        return Path(found) if found else Path(sys.executable)
    found = shutil.which("opik-cipx")
    return Path(found) if found else None


def base_url(settings: Settings) -> str:
    port = settings.port or DEFAULT_PORT
    return f"http://127.0.0.1:{port}"


def hook_command(targets: Targets, spec: HookSpec) -> str:
    script = targets.hooks_dir / spec.script
    return f"sh {shlex.quote(str(script))} hook claude_code {spec.cli_event}"


def settings_snippet(settings: Settings, targets: Targets) -> dict[str, Any]:
    return {
        "env": {"ANTHROPIC_BASE_URL": base_url(settings)},
        "hooks": {
            spec.event: [
                {
                    "matcher": spec.matcher,
                    "hooks": [{"type": "command", "command": hook_command(targets, spec), "timeout": HOOK_TIMEOUT}],
                }
            ]
            for spec in HOOKS
        },
    }


# --- JSON that keeps the file's own shape ------------------------------------------------------


def _indent_of(text: str) -> int | str:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) != len(line):
            lead = line[: len(line) - len(stripped)]
            return "\t" if lead.startswith("\t") else len(lead)
    return 2


def _dump(data: Any, like: str | None) -> bytes:
    indent = _indent_of(like) if like else 2
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    if like is None or like.endswith("\n"):
        text += "\n"
    return text.encode()


def _load_settings(path: Path) -> tuple[dict[str, Any], bytes | None]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ProvisionError(f"{path} is not valid JSON ({exc}); fix it before running setup --apply") from None
    if not isinstance(data, dict):
        raise ProvisionError(f"{path} does not hold a JSON object")
    return data, raw


def _our_commands(targets: Targets) -> set[str]:
    return {hook_command(targets, spec) for spec in HOOKS}


def _mentions_our_script(command: Any) -> bool:
    return isinstance(command, str) and any(spec.script in command for spec in HOOKS)


def merge_settings(data: dict[str, Any], settings: Settings, targets: Targets) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` with our entries added (a new dict; key order kept) and what was added."""
    merged = json.loads(json.dumps(data))
    added: dict[str, Any] = {"created": [], "previous_base_url": None}
    env = merged.get("env")
    if not isinstance(env, dict):
        env = merged["env"] = {}
        added["created"].append("env")
    url = base_url(settings)
    if env.get("ANTHROPIC_BASE_URL") not in (None, url):
        added["previous_base_url"] = env["ANTHROPIC_BASE_URL"]
    env["ANTHROPIC_BASE_URL"] = url
    added["base_url"] = url
    hooks = merged.get("hooks")
    if not isinstance(hooks, dict):
        hooks = merged["hooks"] = {}
        added["created"].append("hooks")
    snippet = settings_snippet(settings, targets)["hooks"]
    for spec in HOOKS:
        entries = hooks.get(spec.event)
        if not isinstance(entries, list):
            entries = hooks[spec.event] = []
            added["created"].append(f"hooks.{spec.event}")
        present = any(
            isinstance(e, dict) and any(isinstance(h, dict) and _mentions_our_script(h.get("command")) for h in e.get("hooks") or [])
            for e in entries
        )
        if not present:
            entries.extend(snippet[spec.event])
    return merged, added


def strip_settings(data: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """``data`` without what setup added: our hook entries, containers we created, our base URL."""
    out = json.loads(json.dumps(data))
    created = set((record or {}).get("created") or ["env", "hooks", *(f"hooks.{s.event}" for s in HOOKS)])
    hooks = out.get("hooks")
    if isinstance(hooks, dict):
        for spec in HOOKS:
            entries = hooks.get(spec.event)
            if not isinstance(entries, list):
                continue
            kept = []
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("hooks"), list):
                    inner = [h for h in entry["hooks"] if not (isinstance(h, dict) and _mentions_our_script(h.get("command")))]
                    if not inner and entry["hooks"]:
                        continue
                    if len(inner) != len(entry["hooks"]):
                        entry = {**entry, "hooks": inner}
                kept.append(entry)
            if kept or f"hooks.{spec.event}" not in created:
                hooks[spec.event] = kept
            else:
                del hooks[spec.event]
        if not hooks and "hooks" in created:
            del out["hooks"]
    env = out.get("env")
    if isinstance(env, dict):
        ours = (record or {}).get("base_url")
        current = env.get("ANTHROPIC_BASE_URL")
        if current is not None and (current == ours or (ours is None and _is_loopback_url(current))):
            previous = (record or {}).get("previous_base_url")
            if previous is not None:
                env["ANTHROPIC_BASE_URL"] = previous
            else:
                del env["ANTHROPIC_BASE_URL"]
        if not env and "env" in created:
            del out["env"]
    return out


def _is_loopback_url(url: str) -> bool:
    return url.startswith(("http://127.0.0.1:", "http://localhost:"))


def setup_plan(
    settings: Settings,
    *,
    apply_settings: bool,
    home: Path | None = None,
    binary: Path | None = None,
) -> Plan:
    """Hook scripts (always) and, with ``apply_settings``, the settings.json merge."""
    targets = Targets.of(settings, home)
    plan = Plan()
    binary = binary or default_binary()
    if binary is None:
        plan.notes.append("no opik-cipx binary found on PATH; the hook scripts will search for it when they run")
    for spec in HOOKS:
        path = targets.hooks_dir / spec.script
        content = render_hook_script(spec, binary).encode()
        if path.exists() and not is_managed(path):
            raise ProvisionError(f"{path} exists and was not written by opik-cipx; move it away first")
        if _read(path) != content:
            plan.changes.append(Change("write", path, f"write hook script {path}", content, 0o755))
    if not apply_settings:
        return plan
    data, raw = _load_settings(targets.settings_path)
    merged, added = merge_settings(data, settings, targets)
    if merged == data:
        return plan
    like = raw.decode("utf-8", "replace") if raw is not None else None
    new = _dump(merged, like)
    if raw is not None and not targets.backup_path.exists():
        plan.changes.append(Change("write", targets.backup_path, f"back up {targets.settings_path} to {targets.backup_path}", raw, 0o600))
    record = {
        "settings_path": str(targets.settings_path),
        "original_existed": raw is not None,
        "original_sha256": hashlib.sha256(raw).hexdigest() if raw is not None else None,
        "written_sha256": hashlib.sha256(new).hexdigest(),
        **added,
    }
    plan.changes.append(
        Change("write", targets.record_path, f"record what was added in {targets.record_path}", json.dumps(record, indent=2).encode(), 0o600)
    )
    plan.changes.append(Change("write", targets.settings_path, _describe_merge(targets, added), new, 0o600))
    if added["previous_base_url"]:
        plan.notes.append(f"ANTHROPIC_BASE_URL was {added['previous_base_url']}; uninstall puts it back")
    return plan


def _describe_merge(targets: Targets, added: dict[str, Any]) -> str:
    return f"merge into {targets.settings_path}: env.ANTHROPIC_BASE_URL={added['base_url']}, hooks " + ", ".join(s.event for s in HOOKS)


def uninstall_plan(settings: Settings, *, home: Path | None = None, stop: Callable[[], str | None] | None = None) -> Plan:
    """Stop the gateway, take our entries out of settings.json, remove marked hooks and the state dir."""
    targets = Targets.of(settings, home)
    plan = Plan()
    if stop is not None:
        plan.changes.append(Change("run", None, "stop the gateway", run=stop))
    record = _read_record(targets.record_path)
    data, raw = _load_settings(targets.settings_path)
    if raw is not None:
        backup = _read(targets.backup_path)
        restorable = (
            record is not None
            and hashlib.sha256(raw).hexdigest() == record.get("written_sha256")
            and (
                (record.get("original_existed") and backup is not None and hashlib.sha256(backup).hexdigest() == record.get("original_sha256"))
                or not record.get("original_existed")
            )
        )
        if restorable and record is not None and not record.get("original_existed"):
            plan.changes.append(Change("remove", targets.settings_path, f"remove {targets.settings_path} (setup created it)"))
        elif restorable and backup is not None:
            plan.changes.append(Change("write", targets.settings_path, f"restore {targets.settings_path} from {targets.backup_path}", backup, 0o600))
        else:
            stripped = strip_settings(data, record)
            if stripped != data:
                new = _dump(stripped, raw.decode("utf-8", "replace"))
                plan.changes.append(Change("write", targets.settings_path, f"remove opik-cipx entries from {targets.settings_path}", new, 0o600))
        if backup is not None and restorable:
            plan.changes.append(Change("remove", targets.backup_path, f"remove {targets.backup_path}"))
    if targets.hooks_dir.is_dir():
        for path in sorted(targets.hooks_dir.iterdir()):
            if path.is_file() and is_managed(path):
                plan.changes.append(Change("remove", path, f"remove managed hook script {path}"))
    if settings.home.exists():
        plan.changes.append(Change("remove-tree", settings.home, f"remove {settings.home} (spool, logs, state)"))
    plan.notes.append(f"if the plugin is installed, also run: claude plugin uninstall {PLUGIN_ID}")
    return plan


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_atomic(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777  # a file we rewrite keeps its permissions
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --- doctor -------------------------------------------------------------------------------------

MANAGED_SETTINGS = (Path("/etc/claude-code/managed-settings.json"), Path("/etc/claude-code/managed-settings.d"))


@dataclass
class Check:
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
    from ..pricing import PriceTable, PricingFileError

    env = dict(os.environ if environ is None else environ)
    targets = Targets.of(settings, home)
    checks: list[Check] = []

    try:
        PriceTable.load(settings.pricing_file)
        checks.append(Check("config", "ok", f"settings valid; state dir {settings.home}"))
    except PricingFileError as exc:
        checks.append(Check("config", "warn", f"pricing overrides ignored: {exc}", f"fix or remove {settings.pricing_file}"))

    code, doc = status.collect_status(settings)
    if code == status.STATUS_OK:
        checks.append(Check("gateway", "ok", f"running, pid {doc.get('pid')}, port {doc.get('port')}"))
    elif code == status.STATUS_DOWN:
        checks.append(Check("gateway", "fail", "not running", "opik-cipx ensure-running (the plugin's SessionStart hook does this)"))
        port = settings.port or DEFAULT_PORT
        if not _port_free(port):
            checks.append(Check("port", "fail", f"127.0.0.1:{port} is taken by another program", "stop it, or pick another port with CIPX_PORT"))
        else:
            checks.append(Check("port", "ok", f"127.0.0.1:{port} is free to bind"))
    else:
        checks.append(Check("gateway", "fail", "; ".join(doc.get("problems") or ["degraded"]), "opik-cipx stop && opik-cipx ensure-running; see opik-cipx logs"))

    checks.append(_spool_check(settings))

    shipper = doc.get("shipper") if code != status.STATUS_DOWN else None
    if code == status.STATUS_DOWN:
        checks.append(Check("opik", "warn", "unknown while the gateway is down", "opik-cipx ensure-running"))
    elif shipper is None:
        checks.append(Check("opik", "warn", "shipper not running: spans stay in the local spool"))
    elif not shipper.get("destination"):
        checks.append(Check("opik", "warn", "no Opik destination configured: spans stay in the local spool",
                            "set OPIK_CIPX_BASE_URL / OPIK_CIPX_API_KEY / OPIK_CIPX_WORKSPACE, or run `opik configure`"))
    else:
        err = shipper.get("last_error") or {}
        last = shipper.get("last_shipped") or {}
        if err.get("at") and err["at"] > (last.get("at") or 0):
            checks.append(Check("opik", "fail", f"last attempt failed: {err.get('message')}", "check the Opik URL, API key and workspace"))
        else:
            checks.append(Check("opik", "ok", f"shipping to {shipper['destination'].get('base_url')}"))

    data, _raw = ({}, None)
    try:
        data, _raw = _load_settings(targets.settings_path)
    except ProvisionError as exc:
        checks.append(Check("settings", "fail", str(exc), f"fix the JSON in {targets.settings_path}"))
    managed_docs = _managed_settings(managed)
    plugin_on = any(d.get("enabledPlugins", {}).get(PLUGIN_ID) for _, d in [(targets.settings_path, data), *managed_docs] if isinstance(d.get("enabledPlugins"), dict))
    hooks = data.get("hooks") if isinstance(data.get("hooks"), dict) else {}
    wired = {
        spec.event: any(
            isinstance(h, dict) and _mentions_our_script(h.get("command"))
            for e in (hooks.get(spec.event) or []) if isinstance(e, dict)
            for h in (e.get("hooks") or [])
        )
        for spec in HOOKS
    }
    scripts_ok = all(is_managed(targets.hooks_dir / spec.script) for spec in HOOKS)
    if plugin_on:
        checks.append(Check("hooks", "ok", f"plugin {PLUGIN_ID} is enabled"))
    elif all(wired.values()) and scripts_ok:
        checks.append(Check("hooks", "ok", f"hooks in {targets.settings_path} run the managed scripts in {targets.hooks_dir}"))
    elif all(wired.values()):
        checks.append(Check("hooks", "fail", "settings.json names hook scripts that are missing or not ours", "opik-cipx setup"))
    else:
        checks.append(Check("hooks", "fail", "neither the plugin nor setup's hooks are configured: nothing restarts the gateway",
                            f"claude plugin install {PLUGIN_ID}, or opik-cipx setup --apply"))

    # The running gateway's port is the truth; the configured one when it is down.
    want = f"http://127.0.0.1:{doc['port']}" if code != status.STATUS_DOWN and doc.get("port") else base_url(settings)
    sources: list[tuple[str, str]] = []
    for path, d in managed_docs:
        value = (d.get("env") or {}).get("ANTHROPIC_BASE_URL") if isinstance(d.get("env"), dict) else None
        if value:
            sources.append((str(path), value))
    value = (data.get("env") or {}).get("ANTHROPIC_BASE_URL") if isinstance(data.get("env"), dict) else None
    if value:
        sources.append((str(targets.settings_path), value))
    if env.get("ANTHROPIC_BASE_URL"):
        sources.append(("the environment", env["ANTHROPIC_BASE_URL"]))
    if not sources:
        checks.append(Check("base-url", "fail", "Claude Code talks to the API directly: ANTHROPIC_BASE_URL is not set",
                            "opik-cipx setup --apply, or set env.ANTHROPIC_BASE_URL in managed settings"))
    else:
        where, value = sources[0]  # managed settings win over user settings, which win over the shell
        if value.rstrip("/") == want:
            checks.append(Check("base-url", "ok", f"ANTHROPIC_BASE_URL={value} (from {where})"))
        else:
            checks.append(Check("base-url", "fail", f"ANTHROPIC_BASE_URL={value} (from {where}) is not the gateway ({want})",
                                f"set it to {want}"))
    return checks


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
        return Check("spool", "fail", f"{path}: {exc}", "opik-cipx purge (drops the local spool)")
    if result != "ok":
        return Check("spool", "fail", f"{path}: integrity check says {result}", "opik-cipx purge (drops the local spool)")
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return Check("spool", "ok", f"{path} ({size} bytes)")

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

The parts live by concern: the launcher and hook scripts in :mod:`.launcher`,
the settings.json merge and strip in :mod:`.settings_json`, ``doctor`` in
:mod:`.doctor`; every name stays importable from here.
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

from ..config import Settings
from ..report.statusline import WRAPPED_FILE
from .doctor import MANAGED_SETTINGS, Check, doctor
from .launcher import (
    HOOKS,
    INSTALL_HINT,
    LAUNCHER_BODY,
    MARKER,
    STATUSLINE_SCRIPT,
    HookSpec,
    is_managed,
    render_hook_script,
    render_launcher,
    render_statusline_script,
)
from .settings_json import (
    BACKUP_SUFFIX,
    HOOK_TIMEOUT,
    PLUGIN_ID,
    RECORD_NAME,
    ProvisionError,
    Targets,
    base_url,
    dump_like,
    hook_command,
    is_our_status_line,
    load_settings,
    merge_settings,
    settings_snippet,
    strip_settings,
)

# Everything setup, uninstall and doctor are made of stays importable from here.
__all__ = [
    "BACKUP_SUFFIX",
    "HOOKS",
    "HOOK_TIMEOUT",
    "INSTALL_HINT",
    "LAUNCHER_BODY",
    "MANAGED_SETTINGS",
    "MARKER",
    "PLUGIN_ID",
    "RECORD_NAME",
    "Change",
    "Check",
    "HookSpec",
    "Plan",
    "ProvisionError",
    "Targets",
    "base_url",
    "base_url_undo_plan",
    "default_binary",
    "doctor",
    "hook_command",
    "is_managed",
    "merge_settings",
    "render_hook_script",
    "render_launcher",
    "settings_snippet",
    "setup_plan",
    "status_line_undo_plan",
    "strip_settings",
    "uninstall_plan",
]

# --- the plan -------------------------------------------------------------------------------------


@dataclass
class Change:
    """One step of a plan; ``summary`` is what the dry run prints for it."""

    action: str  # "write" | "remove" | "remove-tree" | "run"
    path: Path | None
    summary: str
    content: bytes | None = None
    mode: int = 0o644
    run: Callable[[], str | None] | None = field(default=None, repr=False)


@dataclass
class Plan:
    """The changes setup or uninstall would make, in order, and notes for the user."""

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


def setup_plan(
    settings: Settings,
    *,
    apply_settings: bool,
    home: Path | None = None,
    binary: Path | None = None,
    hooks: bool = True,
    status_line: bool = False,
) -> Plan:
    """Hook scripts (unless ``hooks`` is False: the plugin brings its own) and, with
    ``apply_settings``, the settings.json merge."""
    targets = Targets.of(settings, home)
    plan = Plan()
    binary = binary or default_binary()
    if binary is None and hooks:
        plan.notes.append("no opik-cipx binary found on PATH; the hook scripts will search for it when they run")
    for spec in HOOKS if hooks else ():
        path = targets.hooks_dir / spec.script
        content = render_hook_script(spec, binary).encode()
        if path.exists() and not is_managed(path):
            raise ProvisionError(f"{path} exists and was not written by opik-cipx; move it away first")
        if _read(path) != content:
            plan.changes.append(Change("write", path, f"write hook script {path}", content, 0o755))
    if not apply_settings:
        return plan
    data, raw = load_settings(targets.settings_path)
    script = targets.hooks_dir / STATUSLINE_SCRIPT
    command = shlex.quote(str(script)) if status_line else None
    if status_line:
        content_sh = render_statusline_script().encode()
        if script.exists() and not is_managed(script):
            raise ProvisionError(f"{script} exists and was not written by opik-cipx; move it away first")
        if _read(script) != content_sh:
            plan.changes.append(Change("write", script, f"write status-line script {script}", content_sh, 0o755))
    merged, added = merge_settings(data, settings, targets, hooks=hooks, status_line=command)
    earlier = _read_record(targets.record_path) or {}
    if "previous_status_line" not in added and earlier.get("previous_status_line") is not None:
        added["previous_status_line"] = earlier["previous_status_line"]  # wrapped by an earlier run
    wrapped = added.get("previous_status_line")
    if status_line:
        content = json.dumps({"command": wrapped.get("command") if isinstance(wrapped, dict) else None,
                              "original": wrapped}, indent=2).encode()
        path = settings.home / WRAPPED_FILE
        if _read(path) != content:
            plan.changes.append(Change("write", path, f"save the status line ours wraps in {path}", content, 0o600))
        # The same command for the sh script, which cannot read JSON; absent when there is none.
        user = wrapped.get("command") if isinstance(wrapped, dict) else None
        wrapped_sh = settings.home / "statusline-wrapped.sh"
        if isinstance(user, str) and user.strip():
            if _read(wrapped_sh) != (user + "\n").encode():
                plan.changes.append(Change("write", wrapped_sh, f"save it for the status-line script in {wrapped_sh}",
                                           (user + "\n").encode(), 0o600))
        elif wrapped_sh.exists():
            plan.changes.append(Change("remove", wrapped_sh, f"remove {wrapped_sh}"))
    if merged == data:
        return plan
    like = raw.decode("utf-8", "replace") if raw is not None else None
    new = dump_like(merged, like)
    if raw is not None and not targets.backup_path.exists():
        backup = f"back up {targets.settings_path} to {targets.backup_path}"
        plan.changes.append(Change("write", targets.backup_path, backup, raw, 0o600))
    record = {
        "settings_path": str(targets.settings_path),
        "original_existed": raw is not None,
        "original_sha256": hashlib.sha256(raw).hexdigest() if raw is not None else None,
        "written_sha256": hashlib.sha256(new).hexdigest(),
        **added,
    }
    recorded = f"record what was added in {targets.record_path}"
    plan.changes.append(Change("write", targets.record_path, recorded, json.dumps(record, indent=2).encode(), 0o600))
    plan.changes.append(Change("write", targets.settings_path, _describe_merge(targets, added), new, 0o600))
    if added["previous_base_url"]:
        plan.notes.append(f"ANTHROPIC_BASE_URL was {added['previous_base_url']}; uninstall puts it back")
    return plan


def _describe_merge(targets: Targets, added: dict[str, Any]) -> str:
    hooks = ", hooks " + ", ".join(s.event for s in HOOKS) if any(c.startswith("hooks") for c in added["created"]) \
        else ""
    return f"merge into {targets.settings_path}: env.ANTHROPIC_BASE_URL={added['base_url']}{hooks}"


def status_line_undo_plan(settings: Settings, *, home: Path | None = None) -> Plan:
    """OPIK_CIPX_STATUSLINE=off: the user's own status line back (or none), ours out."""
    targets = Targets.of(settings, home)
    plan = Plan()
    data, raw = load_settings(targets.settings_path)
    if raw is None or not is_our_status_line(data.get("statusLine")):
        return plan
    previous = (_read_record(targets.record_path) or {}).get("previous_status_line")
    new = dict(data)
    if previous is not None:
        new["statusLine"] = previous
    else:
        del new["statusLine"]
    content = dump_like(new, raw.decode("utf-8", "replace"))
    what = "put the user's own status line back" if previous is not None else "remove our status line"
    plan.changes.append(Change("write", targets.settings_path, f"{targets.settings_path}: {what}", content, 0o600))
    return plan


def base_url_undo_plan(settings: Settings, *, home: Path | None = None) -> Plan:
    """Only our ANTHROPIC_BASE_URL out of settings.json (the one before it put back), hooks kept:
    the kill switch, so Claude Code talks to Anthropic directly from its next start."""
    targets = Targets.of(settings, home)
    plan = Plan()
    data, raw = load_settings(targets.settings_path)
    env = data.get("env")
    record = _read_record(targets.record_path) or {}
    ours = record.get("base_url") or base_url(settings)
    if raw is None or not isinstance(env, dict) or env.get("ANTHROPIC_BASE_URL") != ours:
        return plan
    new_env = dict(env)
    previous = record.get("previous_base_url")
    if previous:
        new_env["ANTHROPIC_BASE_URL"] = previous
    else:
        del new_env["ANTHROPIC_BASE_URL"]
    new = dump_like({**data, "env": new_env}, raw.decode("utf-8", "replace"))
    what = f"set it back to {previous}" if previous else "remove it"
    plan.changes.append(Change("write", targets.settings_path,
                               f"{targets.settings_path}: ANTHROPIC_BASE_URL={ours} -> {what}", new, 0o600))
    return plan


def uninstall_plan(
    settings: Settings, *, home: Path | None = None, stop: Callable[[], str | None] | None = None,
    keep_data: bool = False,
) -> Plan:
    """Stop the gateway, take our entries out of settings.json, remove marked hooks and, from the
    state dir, the files the gateway wrote (by name: ops/layout.py); ``keep_data`` keeps the spool."""
    from ..ops.layout import LayoutError, state_removal

    try:
        removal = state_removal(settings, keep_data=keep_data)
    except LayoutError as exc:
        raise ProvisionError(str(exc)) from None
    targets = Targets.of(settings, home)
    plan = Plan()
    if stop is not None:
        plan.changes.append(Change("run", None, "stop the gateway", run=stop))
    plan.changes += _settings_undo(targets)
    from ..ops import supervisor

    unit = supervisor.Supervisor.for_platform(home)
    if unit is not None and unit.path.exists():
        plan.changes.append(Change("run", unit.path, f"remove the {unit.kind} supervisor {unit.path}",
                                   run=lambda: supervisor.remove(unit).message))
    if targets.hooks_dir.is_dir():
        for path in sorted(targets.hooks_dir.iterdir()):
            if path.is_file() and is_managed(path):
                plan.changes.append(Change("remove", path, f"remove managed hook script {path}"))
    if removal.files or removal.trees:
        kept = " (keeping the spool and logs)" if keep_data else " (spool, logs, state, installed binary)"

        def remove_state() -> None:
            # Found again now: the gateway, just stopped, may have written a last log line.
            state_removal(settings, keep_data=keep_data).apply()

        plan.changes.append(Change("run", settings.home, f"remove opik-cipx's files from {settings.home}{kept}",
                                   run=remove_state))
    if removal.left:
        names = ", ".join(str(p.relative_to(settings.home)) for p in removal.left[:8])
        more = f" and {len(removal.left) - 8} more" if len(removal.left) > 8 else ""
        plan.notes.append(f"left in {settings.home} (not written by the gateway, or kept): {names}{more}")
    plan.notes.append(f"if the plugin is installed, also run: claude plugin uninstall {PLUGIN_ID}")
    return plan


def _settings_undo(targets: Targets) -> list[Change]:
    """settings.json back as it was: the backup's bytes while the file is still what setup wrote,
    else only our entries taken out (the user has edited it since)."""
    data, raw = load_settings(targets.settings_path)
    if raw is None:
        return []
    record = _read_record(targets.record_path)
    backup = _read(targets.backup_path)
    restorable = (
        record is not None
        and hashlib.sha256(raw).hexdigest() == record.get("written_sha256")
        and (
            not record.get("original_existed")
            or (backup is not None and hashlib.sha256(backup).hexdigest() == record.get("original_sha256"))
        )
    )
    path = targets.settings_path
    changes: list[Change] = []
    if restorable and record is not None and not record.get("original_existed"):
        changes.append(Change("remove", path, f"remove {path} (setup created it)"))
    elif restorable and backup is not None:
        changes.append(Change("write", path, f"restore {path} from {targets.backup_path}", backup, 0o600))
    else:
        stripped = strip_settings(data, record)
        if stripped != data:
            new = dump_like(stripped, raw.decode("utf-8", "replace"))
            changes.append(Change("write", path, f"remove opik-cipx entries from {path}", new, 0o600))
    if backup is not None and restorable:
        changes.append(Change("remove", targets.backup_path, f"remove {targets.backup_path}"))
    return changes


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


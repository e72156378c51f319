"""Claude Code's ``settings.json``: our entries merged in and taken out again, keeping the file's shape.

The merge adds only our hook entries and ``env.ANTHROPIC_BASE_URL``, keeps every
other key and its order, and writes with the file's own indentation; the strip
takes out exactly what the merge added (as recorded at setup), so a base URL the
user had before comes back.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_PORT, Settings
from .launcher import HOOKS, HookSpec, mentions_our_script

PLUGIN_ID = "opik-cipx@opik-enterprise"
RECORD_NAME = "provision.json"
BACKUP_SUFFIX = ".opik-cipx.bak"
HOOK_TIMEOUT = 10


class ProvisionError(RuntimeError):
    """A file setup or uninstall must not touch as it is (not JSON, not ours)."""


@dataclass(frozen=True)
class Targets:
    """Where Claude Code's user settings and our hook scripts and setup record live."""

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


def dump_like(data: Any, like: str | None) -> bytes:
    indent = _indent_of(like) if like else 2
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    if like is None or like.endswith("\n"):
        text += "\n"
    return text.encode()


def load_settings(path: Path) -> tuple[dict[str, Any], bytes | None]:
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


def _is_ours(hook: object) -> bool:
    return isinstance(hook, dict) and mentions_our_script(hook.get("command"))


STATUS_LINE_MARK = " statusline"  # our statusLine command is `<binary> statusline`


def is_our_status_line(value: object) -> bool:
    command = str(value.get("command") or "") if isinstance(value, dict) else ""
    return command.endswith((STATUS_LINE_MARK, "opik-cipx-statusline.sh"))


def merge_status_line(merged: dict[str, Any], added: dict[str, Any], command: str | None) -> None:
    """Our status line in ``merged``, the user's own (if any) in ``added["previous_status_line"]``
    so ours can run it underneath and uninstall can put it back. ``command`` None: leave it."""
    if command is None:
        return
    current = merged.get("statusLine")
    if current is not None and not is_our_status_line(current):
        added["previous_status_line"] = current
    merged["statusLine"] = {"type": "command", "command": command, "padding": 0}
    added["status_line"] = command


def merge_settings(
    data: dict[str, Any], settings: Settings, targets: Targets, *, hooks: bool = True,
    status_line: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` with our entries added (a new dict; key order kept) and what was added.
    ``hooks=False``: only the base URL (the plugin brings its own hooks); ``status_line``: our
    status-line command, wrapping the user's own."""
    merged: dict[str, Any] = json.loads(json.dumps(data))
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
    merge_status_line(merged, added, status_line)
    if not hooks:
        return merged, added
    listed = merged.get("hooks")
    if not isinstance(listed, dict):
        listed = merged["hooks"] = {}
        added["created"].append("hooks")
    snippet = settings_snippet(settings, targets)["hooks"]
    for spec in HOOKS:
        entries = listed.get(spec.event)
        if not isinstance(entries, list):
            entries = listed[spec.event] = []
            added["created"].append(f"hooks.{spec.event}")
        present = any(isinstance(e, dict) and any(_is_ours(h) for h in e.get("hooks") or []) for e in entries)
        if not present:
            entries.extend(snippet[spec.event])
    return merged, added


def strip_settings(data: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """``data`` without what setup added: our hook entries, containers we created, our base URL,
    our status line (the user's own put back)."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    if is_our_status_line(out.get("statusLine")):
        previous = (record or {}).get("previous_status_line")
        if previous is not None:
            out["statusLine"] = previous
        else:
            del out["statusLine"]
    created = set((record or {}).get("created") or ["env", "hooks", *(f"hooks.{s.event}" for s in HOOKS)])
    hooks = out.get("hooks")
    if isinstance(hooks, dict):
        for spec in HOOKS:
            entries = hooks.get(spec.event)
            if not isinstance(entries, list):
                continue
            kept: list[Any] = []
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("hooks"), list):
                    inner = [h for h in entry["hooks"] if not _is_ours(h)]
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


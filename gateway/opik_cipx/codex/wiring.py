"""``~/.codex/config.toml`` pointed at the gateway, and restored: the I/O around config_toml.py.

What the file held before the first wiring is kept in the state directory (``codex/``): the
exact bytes (or that there was no file) and the values we wrote. Uninstall puts the original
bytes back when the file is still as we left it; when the user edited it since, only our keys
are taken back out (config_toml.unwire_text), so their edits survive.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from .config_toml import KEYS, ConfigError, current, unwire_text, wire_text


class WiringError(Exception):
    """The config could not be read or written; nothing was changed."""


def codex_config_path(env: dict[str, str] | None = None) -> Path:
    """Where Codex reads its config: ``$CODEX_HOME/config.toml``, else ``~/.codex/config.toml``."""
    environ = os.environ if env is None else env
    base = environ.get("CODEX_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".codex")
    return Path(base) / "config.toml"


@dataclass(frozen=True)
class _State:
    dir: Path

    @property
    def original(self) -> Path:
        return self.dir / "config.toml.orig"

    @property
    def record(self) -> Path:
        return self.dir / "wired.json"


def _state(settings: Settings) -> _State:
    return _State(settings.home / "codex")


def base_urls(port: int, *, chatgpt: bool) -> dict[str, str]:
    """The values Codex needs for a gateway on ``port`` (``chatgpt_base_url`` for a ChatGPT login)."""
    urls = {"openai_base_url": f"http://127.0.0.1:{port}/v1"}
    if chatgpt:
        urls["chatgpt_base_url"] = f"http://127.0.0.1:{port}/backend-api/"
    return urls


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.cipx-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _read(path: Path) -> str:
    # Bytes decoded as they are: read_text would turn CRLF into LF and break the exact restore.
    return path.read_bytes().decode("utf-8")


def uses_chatgpt_login(config: Path) -> bool:
    """Codex logged in with ChatGPT keeps ``auth.json`` with tokens beside its config."""
    try:
        auth = json.loads((config.parent / "auth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(auth, dict) and bool(auth.get("tokens")) and not auth.get("OPENAI_API_KEY")


def sync_codex(settings: Settings, port: int | None = None, *, config: Path | None = None) -> str:
    """Point Codex at the gateway (idempotent); returns what was done, in one line."""
    path = config or codex_config_path()
    port = port or settings.port
    values = base_urls(port, chatgpt=uses_chatgpt_login(path))
    try:
        text = _read(path) if path.exists() else ""
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
        before = current(text)
        new = wire_text(text, values)
    except (OSError, ConfigError, UnicodeDecodeError) as exc:
        raise WiringError(f"cannot update {path}: {exc}") from exc
    state = _state(settings)
    if not state.record.exists():  # the first wiring keeps the original, later ones do not
        state.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            _write(state.original, text, 0o600)
        state.record.write_text(json.dumps({"path": str(path), "existed": path.exists(), "previous": before}))
    record = json.loads(state.record.read_text())
    record["ours"] = values
    record["written"] = new
    state.record.write_text(json.dumps(record))
    if new == text:
        return f"codex: {path} already points at the gateway"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, new, mode)
    return f"codex: {path}: " + ", ".join(f"{k} = {v}" for k, v in values.items())


def unsync_codex(settings: Settings) -> str | None:
    """Undo :func:`sync_codex`; None when it was never run. Leaves no state behind."""
    state = _state(settings)
    try:
        record = json.loads(state.record.read_text())
    except (OSError, ValueError):
        return None
    path = Path(record["path"])
    try:
        text = _read(path) if path.exists() else None
    except OSError as exc:
        raise WiringError(f"cannot read {path}: {exc}") from exc
    if text is not None and text == record.get("written"):
        if record.get("existed"):
            _write(path, _read(state.original), path.stat().st_mode & 0o777)
            message = f"codex: {path} restored as it was"
        else:
            path.unlink()
            message = f"codex: {path} removed (setup created it)"
    elif text is not None:
        try:
            _write(path, unwire_text(text, record.get("previous") or {}, record.get("ours") or {}),
                   path.stat().st_mode & 0o777)
        except ConfigError as exc:
            raise WiringError(f"cannot update {path}: {exc}") from exc
        message = f"codex: {path} edited since setup: only {', '.join(KEYS)} taken back"
    else:
        message = f"codex: {path} is gone; nothing to restore"
    for leftover in (state.original, state.record):
        leftover.unlink(missing_ok=True)
    return message

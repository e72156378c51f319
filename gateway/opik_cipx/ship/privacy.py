"""Privacy mode and sampling, applied to Opik records at the shipping edge.

``CIPX_CAPTURE_CONTENT=false`` ships counts, costs, structure and identity but
never prompt or completion bytes. :func:`redact_record` is pure and works on a
copy; the list of what goes and what stays is the module's contract and is
pinned by ``tests/test_privacy.py`` field by field.

``CIPX_SAMPLE_RATE`` picks calls by a hash of the exchange id, so deriving a
span again after a crash makes the same choice. Both settings are re-read from
the config file every few seconds by :class:`LiveOptions`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..settings_view import CaptureSettings, parse_flag, parse_rate, toml_items

log = logging.getLogger(__name__)


def _drop_text(holder: Any, key: str, length_key: str) -> None:
    """Remove ``holder[key]`` (a text) and keep its length under ``length_key``."""
    if not isinstance(holder, dict) or key not in holder:
        return
    value = holder.pop(key)
    if length_key not in holder:
        holder[length_key] = len(value) if isinstance(value, str) else len(str(value))


def redact_metadata(meta: dict[str, Any]) -> None:
    """In place: the content-bearing fields of ``metadata["cc"]``, each replaced by its length."""
    cc = meta.get("cc")
    if not isinstance(cc, dict):
        return
    prompt = cc.get("user_prompt")
    if isinstance(prompt, dict):
        _drop_text(prompt, "text", "text_chars")
        prompts = prompt.get("prompts")
        if isinstance(prompts, list):
            for entry in prompts:
                _drop_text(entry, "text", "text_chars")
    commands = cc.get("slash_commands")
    by_command = commands.get("summary", {}).get("by_command") if isinstance(commands, dict) else None
    if isinstance(by_command, dict):
        for entry in by_command.values():
            _drop_text(entry, "args", "args_chars")
            _drop_text(entry, "local_command_stdout", "local_command_stdout_chars")
    tool_io = cc.get("tool_io")
    by_tool = tool_io.get("by_tool") if isinstance(tool_io, dict) else None
    if isinstance(by_tool, dict):
        for entry in by_tool.values():
            if isinstance(entry, dict):
                entry.pop("sample_chars", None)
    compaction = cc.get("compaction")
    if isinstance(compaction, dict):
        _drop_text(compaction, "summary", "summary_chars")
    error = cc.get("error")
    if isinstance(error, dict):
        _drop_text(error, "body", "body_chars")


def redact_record(record: Mapping[str, Any], *, applied_at: str) -> dict[str, Any]:
    """A copy of a trace or span without prompt/completion bytes, marked ``cc.privacy``."""
    out = copy.deepcopy(dict(record))
    out.pop("input", None)
    out.pop("output", None)
    meta = out.get("metadata")
    if not isinstance(meta, dict):
        meta = out["metadata"] = {}
    redact_metadata(meta)
    cc = meta.setdefault("cc", {})
    cc["privacy"] = {"capture_content": False, "applied_at": applied_at}
    return out


def sampled(key: str, rate: float) -> bool:
    """Whether the call keyed ``key`` is shipped at ``rate`` (0.0-1.0); stable per key."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return bucket < rate


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Options:
    capture_content: bool
    sample_rate: float


_ENV = {"capture_content": "CIPX_CAPTURE_CONTENT", "sample_rate": "CIPX_SAMPLE_RATE"}
# config.toml keys for them: the field name or the env name, any case (as Settings reads them).
_KEYS = {key.lower(): field for field, env in _ENV.items() for key in (field, env)}


class LiveOptions:
    """``capture_content`` and ``sample_rate``, hot-reloaded from the config file.

    The environment still outranks the file, as at start-up: a key whose
    ``CIPX_*`` variable is set in ``env`` keeps the start-up value. A file that
    fails to parse keeps the last good values (and says why in the log).
    """

    def __init__(self, settings: CaptureSettings, *, env: Mapping[str, str] | None = None, ttl: float = 2.0) -> None:
        self._settings = settings
        self._env = env if env is not None else os.environ
        self._ttl = ttl
        self._checked = float("-inf")
        self._stamp: tuple[int, int] | None = None
        self._current = Options(settings.capture_content, settings.sample_rate)
        self.error: str | None = None

    @property
    def path(self) -> Path:
        return self._settings.config_file

    def get(self) -> Options:
        now = time.monotonic()
        if now - self._checked < self._ttl:
            return self._current
        self._checked = now
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return self._current
        self._stamp = stamp
        try:
            values = toml_items(self.path, _KEYS) if stamp is not None else {}
            # Parsed as Settings parses them, without building one (no pydantic in the worker).
            capture = parse_flag(values["capture_content"][1]) if "capture_content" in values \
                else self._settings.capture_content
            rate = parse_rate(values["sample_rate"][1]) if "sample_rate" in values else self._settings.sample_rate
        except Exception as exc:  # noqa: BLE001 - a bad edit must not stop shipping
            self.error = f"{self.path}: {exc}"
            log.warning("config reload failed, keeping previous options: %s", self.error)
            return self._current
        self.error = None
        self._current = Options(
            self._settings.capture_content if _ENV["capture_content"] in self._env else capture,
            self._settings.sample_rate if _ENV["sample_rate"] in self._env else rate,
        )
        return self._current


def mask_key(key: str | None) -> str | None:
    """An API key as status output may show it: enough to tell keys apart, not to use one."""
    if not key:
        return None
    return f"{key[:2]}…{key[-4:]}" if len(key) > 12 else "****"

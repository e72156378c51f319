"""Codex CLI as a client of the gateway: its ``config.toml`` wiring (setup / sync / uninstall)."""

from .config_toml import KEYS, unwire_text, wire_text
from .wiring import WiringError, codex_config_path, sync_codex, unsync_codex

__all__ = ["KEYS", "WiringError", "codex_config_path", "sync_codex", "unsync_codex", "unwire_text", "wire_text"]

"""What the gateway writes under ``CIPX_HOME``, by name, so uninstall removes that and only that.

``CIPX_HOME`` may point at a directory the user shares with other things (a dotfiles dir, a
team's tools dir). Removing the whole tree there would delete files we never wrote, so the
state dir is described here as names and patterns, and everything else is left and listed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from ..config import Settings

# Top-level files of the state dir (pidfile and locks from daemon.py, the port file, the viewer's
# token, setup's record) and the names they take while being written atomically.
TOP_FILES = ("port", "gateway.lock", "gateway.pid", "start.lock", "viewer-token", "provision.json",
             "statusline-wrapped.json", "statusline-wrapped.sh", "*.tmp")
# The status line's per-session summaries (capture/session_summary.py).
# (*.json and *.line: the two files each session had before one .status file replaced them.)
SESSION_FILES = ("*.status", "*.json", "*.line", ".*.tmp")
# The captured calls: SQLite and its side files, the capture journal, the busy flag.
SPOOL_FILES = ("spool.sqlite3", "spool.sqlite3-*", "capture.journal*", "proxy.busy", "*.tmp")
LOG_FILES = ("cipx.log*", "capture-worker.log*", "spawn.log*")
# Codex's wiring record and the config.toml it replaced (codex/wiring.py); uninstall restores
# Codex's file from it before this removal runs.
CODEX_FILES = ("config.toml.orig", "wired.json", "*.tmp")
# install.sh's default layout: the entry point and the release bundles it points into.
BIN_ENTRIES = ("opik-cipx", ".opik-cipx-releases")


class LayoutError(Exception):
    pass


@dataclass
class Removal:
    """What uninstall removes from the state dir, and what it leaves (not ours, or kept)."""

    files: list[Path] = field(default_factory=list)
    trees: list[Path] = field(default_factory=list)  # only our own sub-trees (release bundles)
    dirs: list[Path] = field(default_factory=list)  # removed when empty afterwards, deepest first
    left: list[Path] = field(default_factory=list)

    def apply(self) -> None:
        for path in self.files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        for tree in self.trees:
            shutil.rmtree(tree, ignore_errors=True)
        for directory in self.dirs:
            try:
                directory.rmdir()
            except OSError:  # not empty (files we did not write), or already gone
                pass


def refuse_shared_home(home: Path) -> None:
    """A state dir that is the home directory or the root would put user files in reach."""
    resolved = home.expanduser().resolve()
    if resolved == Path("/") or resolved == Path(os.path.expanduser("~")).resolve():
        raise LayoutError(
            f"CIPX_HOME is {resolved}, which is not a directory of opik-cipx's own; "
            "refusing to clean it up (remove opik-cipx's files by hand, or point CIPX_HOME at its own dir)"
        )


def state_removal(settings: Settings, *, keep_data: bool = False) -> Removal:
    """Our files in the state dir, found by name; ``keep_data`` keeps the spool (captured calls)
    and the logs."""
    home = settings.home
    refuse_shared_home(home)
    out = Removal()
    if not home.is_dir():
        return out
    _match(home, TOP_FILES, out, skip={"spool", "logs", "bin", "sessions", "codex"})
    _match(home / "sessions", SESSION_FILES, out)
    _match(home / "codex", CODEX_FILES, out)
    out.dirs += [home / "sessions", home / "codex"]
    if not keep_data:
        _match(settings.spool_dir, SPOOL_FILES, out)
        _match(settings.logs_dir, LOG_FILES, out)
        out.dirs += [settings.spool_dir, settings.logs_dir]
    bin_dir = home / "bin"
    if bin_dir.is_dir():
        for entry in sorted(bin_dir.iterdir()):
            if entry.name not in BIN_ENTRIES:
                out.left.append(entry)
            elif entry.is_dir() and not entry.is_symlink():
                out.trees.append(entry)
            else:
                out.files.append(entry)
        out.dirs.append(bin_dir)
    out.dirs.append(home)
    return out


def _match(directory: Path, patterns: tuple[str, ...], out: Removal, skip: set[str] | None = None) -> None:
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        if skip and entry.name in skip:
            continue
        if (entry.is_file() or entry.is_symlink()) and any(fnmatch(entry.name, p) for p in patterns):
            out.files.append(entry)
        else:
            out.left.append(entry)

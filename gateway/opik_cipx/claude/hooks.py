"""Claude Code hook handling: session registration and keep-alive.

A hook must never hurt the session it runs in: it exits 0 whatever happens,
writes nothing on stdout (SessionStart stdout is injected into the model's
context and costs tokens in every session), stays within a hard time bound
and sends its errors to the log.

``session-start`` makes sure the gateway runs and tells it about the session
(cwd, transcript, the environment values that matter, git repo and branch) so
the gateway can resolve enablement markers and identity per session.
``pre-tool-use`` and ``user-prompt-submit`` only keep the gateway alive; the
plugin's launcher answers those in sh when the gateway is already up.
"""

from __future__ import annotations

import configparser
import http.client
import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Settings
from ..ops import daemon
from ..store.sessions import SessionInfo

log = logging.getLogger(__name__)

SESSION_START = "session-start"
KEEP_ALIVE_EVENTS = frozenset({"pre-tool-use", "user-prompt-submit"})
EVENTS = frozenset({SESSION_START, *KEEP_ALIVE_EVENTS})

# Hard bounds in seconds, under the 10 s timeout hooks.json gives Claude Code.
SESSION_START_BOUND = 8.0
KEEP_ALIVE_BOUND = 5.0

ENV_PREFIXES = ("OPIK_CC_", "OPIK_CIPX_")
ENV_NAMES = frozenset({"OPIK_TRACE_ID", "OPIK_PARENT_SPAN_ID", "OPIK_PROJECT_NAME", "OPIK_WORKSPACE"})
# Secrets are not registered: the spool is not the place for them, and the gateway has its own.
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|DSN|COOKIE", re.IGNORECASE)
_CREDENTIALS_IN_URL = re.compile(r"(?<=://)[^/@]+@")


def bound_for(event: str) -> float:
    return SESSION_START_BOUND if event == SESSION_START else KEEP_ALIVE_BOUND


def session_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that steer tracing for a session, minus anything secret."""
    return {
        k: v
        for k, v in sorted(env.items())
        if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES) and not _SECRET.search(k)
    }


def git_info(cwd: Path) -> tuple[str | None, str | None]:
    """(repo, branch) of the work tree holding ``cwd``, read from files: no git process.

    The repo is the ``origin`` remote URL (credentials removed) or else the work
    tree's top directory; the branch is None on a detached HEAD.
    """
    for top in (cwd, *cwd.parents):
        dot_git = top / ".git"
        if dot_git.is_dir():
            git_dir = dot_git
        elif dot_git.is_file():
            # A worktree or submodule: ".git" is a file naming the real directory.
            text = dot_git.read_text(errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None, None
            git_dir = (top / text.split(":", 1)[1].strip()).resolve()
        else:
            continue
        return _origin(git_dir) or str(top), _branch(git_dir)
    return None, None


def _branch(git_dir: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text(errors="replace").strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head[len(prefix):] if head.startswith(prefix) else None


def _origin(git_dir: Path) -> str | None:
    config_dir = git_dir
    common = git_dir / "commondir"
    if common.is_file():  # linked worktrees keep the config in the main repository
        config_dir = (git_dir / common.read_text().strip()).resolve()
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(config_dir / "config", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    url = parser.get('remote "origin"', "url", fallback=None)
    return _CREDENTIALS_IN_URL.sub("", url) if url else None


def session_from_payload(payload: Mapping[str, Any], env: Mapping[str, str]) -> SessionInfo:
    """The registration for a SessionStart payload and the hook's environment."""
    sid = payload.get("session_id") or env.get("CLAUDE_CODE_SESSION_ID")
    if not isinstance(sid, str) or not sid:
        raise ValueError("hook payload has no session_id")
    cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else env.get("CLAUDE_PROJECT_DIR")
    repo, branch = git_info(Path(cwd)) if cwd else (None, None)
    now = time.time()

    def text(key: str) -> str | None:
        value = payload.get(key)
        return value if isinstance(value, str) else None

    return SessionInfo(
        session_id=sid,
        cwd=cwd,
        transcript_path=text("transcript_path"),
        source=text("source"),
        env=session_env(env),
        git_repo=repo,
        git_branch=branch,
        registered_at=now,
        last_seen=now,
    )


def register(port: int, info: SessionInfo, timeout: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(0.1, timeout))
    try:
        body = json.dumps(info.to_json()).encode()
        conn.request("POST", "/_cipx/sessions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        detail = resp.read(4096)
        if resp.status >= 300:
            raise RuntimeError(f"session registration answered {resp.status}: {detail[:200]!r}")
    finally:
        conn.close()


def parse_payload(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("hook payload is not a JSON object")
    return data


def handle(
    event: str, raw: bytes, settings: Settings, env: Mapping[str, str], *, argv: list[str] | None = None
) -> None:
    """Do the event's work; raises on failure (the caller logs and still exits 0)."""
    if event not in EVENTS:
        raise ValueError(f"unknown hook event {event!r}; expected one of {sorted(EVENTS)}")
    deadline = time.monotonic() + bound_for(event) - 0.5
    payload = parse_payload(raw)
    if settings.disabled:
        if event == SESSION_START:  # the kill switch: undo the wiring, start nothing
            from .sync import sync

            for line in sync(settings, bring_up=False).lines:
                log.info("sync: %s", line)
        return
    live = daemon.ensure_running(settings, timeout=max(0.5, deadline - time.monotonic()), argv=argv)
    if event != SESSION_START:
        return
    info = session_from_payload(payload, env)
    assert live.port is not None  # ensure_running only returns a gateway that answered on it
    register(live.port, info, timeout=deadline - time.monotonic())
    log.info("registered session %s (source=%s, cwd=%s)", info.session_id, info.source, info.cwd)
    # Then the rest of the repair (wiring, supervisor), in the time left: the session is served.
    from .sync import sync

    for line in sync(settings, bring_up=False).lines:
        log.info("sync: %s", line)


def run_hook(
    event: str, raw: bytes, settings: Settings, env: Mapping[str, str], *, argv: list[str] | None = None
) -> int:
    """The hook's whole life: never raises, always 0."""
    try:
        handle(event, raw, settings, env, argv=argv)
    except Exception as exc:  # noqa: BLE001 - a hook must not fail the session
        log.error("hook %s failed: %s: %s", event, type(exc).__name__, exc)
    return 0

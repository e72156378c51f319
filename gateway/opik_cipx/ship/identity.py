"""Who is using Claude Code: identity from ``~/.claude.json``, and project-name templating.

Claude Code keeps the signed-in account under ``oauthAccount`` in
``~/.claude.json``. Signed in with an API key there is no account: the
identity then falls back to what the request carries (``metadata.user_id``'s
``account_uuid``, empty for API keys) and the local user name.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELOAD_EVERY = 2.0  # seconds between stats of ~/.claude.json: a sign-in shows up within this


@dataclass(frozen=True, slots=True)
class Identity:
    user_email: str | None = None
    user_uuid: str | None = None
    org_uuid: str | None = None
    org_name: str | None = None
    display_name: str | None = None
    source: str = "none"  # claude.json | request | none

    @property
    def username(self) -> str | None:
        """The email's local part, else None."""
        if self.user_email and "@" in self.user_email:
            return self.user_email.split("@", 1)[0]
        return self.user_email or None

    def metadata(self) -> dict[str, Any]:
        """``cc.identity``: only the fields that are known."""
        out: dict[str, Any] = {
            "user_email": self.user_email,
            "user_uuid": self.user_uuid,
            "org_uuid": self.org_uuid,
            "org_name": self.org_name,
            "display_name": self.display_name,
            "source": self.source,
        }
        return {k: v for k, v in out.items() if v is not None}

    def tags(self) -> list[str]:
        return [f"user:{self.user_email}"[:100]] if self.user_email else []

    def with_request(self, account_uuid: str | None) -> Identity:
        """Fill the user uuid from the request when the file had none (API-key sign-in)."""
        if self.user_uuid or not account_uuid:
            return self
        source = self.source if self.source != "none" else "request"
        return Identity(self.user_email, account_uuid, self.org_uuid, self.org_name, self.display_name, source)


def _str(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def identity_from_claude_json(doc: Any) -> Identity:
    """Identity from the parsed ``~/.claude.json``; empty when there is no account in it."""
    if not isinstance(doc, dict):
        return Identity()
    account = doc.get("oauthAccount")
    if not isinstance(account, dict):
        return Identity()
    ident = Identity(
        user_email=_str(account.get("emailAddress")),
        user_uuid=_str(account.get("accountUuid")),
        org_uuid=_str(account.get("organizationUuid")),
        org_name=_str(account.get("organizationName")),
        display_name=_str(account.get("displayName")),
        source="claude.json",
    )
    if not any((ident.user_email, ident.user_uuid, ident.org_uuid)):
        return Identity()
    return ident


def claude_json_path(home: Path | None = None) -> Path:
    base = home if home is not None else Path(os.path.expanduser("~"))
    return base / ".claude.json"


class IdentitySource:
    """``~/.claude.json`` read lazily and again when it changes (checked every few seconds)."""

    def __init__(self, path: Path, *, reload_every: float = RELOAD_EVERY) -> None:
        self.path = path
        self._reload_every = reload_every
        self._checked = float("-inf")
        self._stamp: tuple[int, int] | None = None
        self._identity = Identity()

    def get(self) -> Identity:
        now = time.monotonic()
        if now - self._checked < self._reload_every:
            return self._identity
        self._checked = now
        try:
            st = self.path.stat()
        except OSError:
            self._stamp, self._identity = None, Identity()
            return self._identity
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                doc = None  # mid-write by Claude Code: keep what we had and look again soon
                return self._identity
            self._stamp = stamp
            self._identity = identity_from_claude_json(doc)
        return self._identity


def local_user() -> str | None:
    try:
        return getpass.getuser() or None
    except (KeyError, OSError):  # no passwd entry in some containers
        return None


_TOKEN = re.compile(r"\{([A-Za-z_]+)\}")


def render_project(
    template: str, identity: Identity, *, user: str | None = None, hostname: str | None = None
) -> str:
    """Fill ``{username}`` … ``{hostname}`` in an ``OPIK_CIPX_PROJECT`` template.

    Unknown tokens pass through literally, and so do known ones whose value is
    unknown, so a typo or a missing sign-in is visible in the project name rather
    than silently collapsing several users into one project.
    """
    values: dict[str, str | None] = {
        "username": identity.username,
        "email": identity.user_email,
        "user_email": identity.user_email,
        "user_uuid": identity.user_uuid,
        "display_name": identity.display_name,
        "org_name": identity.org_name,
        "org_uuid": identity.org_uuid,
        "user": user if user is not None else local_user(),
        "hostname": hostname if hostname is not None else socket.gethostname(),
    }

    def fill(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        return value if value else match.group(0)

    rendered = _TOKEN.sub(fill, template).strip()
    return rendered or template
